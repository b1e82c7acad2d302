"""A detector for the notebooks that need one, trained on the spot when there is none.

Notebooks 05 and 06 evaluate and explain the detectors notebook 03 trained. Opened alone (a
fresh Colab runtime, a fresh clone), there is none yet: rather than stop, they train the
dataset's default here, with the same loop and configuration as notebook 03, and say so.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..core import paths
from ..core.detector import detector_paths
from .config import default_config
from .loop import fit


def ensure_detector(cache, seed: int = 0, device: str = "auto", progress: bool = True) -> list[Path]:
    """The detector checkpoints of ``cache``'s dataset (``results/<dataset>/models/``); when
    there are none, notebook 03's default for the dataset is trained first (its measured
    configuration, on ``device``), with a line before saying what and a line after saying how
    long it took. Returns the checkpoints' paths."""
    dataset = cache.meta["dataset"]
    found = detector_paths(dataset)
    if found:
        return found
    config = default_config(dataset, image_size=cache.meta["image_size"], seed=seed, device=device)
    folder = paths.shown(paths.RESULTS / dataset / "models")
    print(f"No detector of {dataset} in {folder} yet (notebook 03 trains one): training the dataset's "
          f"default now, {config.model} for {config.epochs} epochs on device {config.device} (on 2 CPU "
          f"cores the demo's took about a minute, CIFAKE's about 20).")
    start = time.perf_counter()
    result = fit(cache, config, progress=progress)
    print(f"trained {config.model} in {time.perf_counter() - start:.0f} s: validation accuracy "
          f"{result.metrics['val_acc']:.4f}; checkpoint {paths.shown(result.checkpoint)}")
    return detector_paths(dataset)
