"""Train the demo set's generator once and write the weights that ship with the project.

``python -m helpers.gan.demo_generator`` (about a minute on 2 CPU cores) trains DCGAN as the demo
build did before the weights were shipped: the ``dcgan`` recipe at 32 px, width 32, batch 32,
20 epochs, seed 0, on the demo's 1,200 REAL training crops (``helpers.data.demo.photo_crops``
with the demo's seed 0). It writes :data:`helpers.gan.demo.WEIGHTS`; the demo set changes with it,
so bump ``helpers.data.demo.DEMO_VERSION`` in the same commit. Training rounds differently on
different CPUs, which is why the result is shipped rather than retrained by every build.
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..core.accel import pick_device, set_cpu_threads
from ..core.repro import atomic_path, seed_everything
from ..data.demo import TRAIN_PHOTOS, photo_crops
from .config import recipe_config
from .demo import WEIGHTS
from .train import STAT_KEYS, train_gan

RECIPE = dict(recipe="dcgan", resolution=32, ngf=32, ndf=32, batch_size=32, epochs=20)


def train_demo_generator(out: Path = WEIGHTS, seed: int = 0, n_train: int = 1200, epochs: int = 20,
                         progress: bool = True) -> dict:
    """Train the demo generator on the demo's REAL training crops and save it to ``out``
    (atomically); returns the saved record without the weights."""
    seed_everything(seed)
    set_cpu_threads()
    real = photo_crops(TRAIN_PHOTOS, n_train, 32, np.random.default_rng(seed))
    settings = {**RECIPE, "epochs": epochs}
    config = recipe_config(settings.pop("recipe"), **settings, seed=seed)
    gan, history = train_gan(real, config, pick_device("cpu"), progress=progress)
    record = {"nz": config.nz, "ngf": config.ngf, "resolution": config.resolution,
              "trained": {"config": asdict(config), "n_real": n_train,
                          "final_epoch": {k: v for k, v in history[-1].items() if k in STAT_KEYS + ("epoch",)},
                          "torch": str(torch.__version__), "machine": platform.machine(),
                          "isa": torch.backends.cpu.get_cpu_capability()}}
    state = {k: v.detach().float().clone() for k, v in gan.G.state_dict().items()}
    with atomic_path(out) as tmp:
        torch.save({**record, "state_dict": state}, tmp)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    record = train_demo_generator(args.out, epochs=args.epochs)
    print(f"wrote {args.out}: {record['trained']['final_epoch']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
