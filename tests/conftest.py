"""Shared fixtures: an isolated data/results tree and tiny image datasets written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.core import paths
from helpers.data.cache import prepare
from helpers.training.config import TrainConfig
from helpers.training.loop import fit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run on a real CUDA GPU; elsewhere they are skipped with the reason.
    (Their CPU counterparts force the CUDA branches by standing in for torch.cuda's answers.)"""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def project_dirs(tmp_path, monkeypatch):
    """Point helpers.core.paths at a temporary data/ and results/ (the real ones stay untouched)."""
    data, results = tmp_path / "data", tmp_path / "results"
    monkeypatch.setattr(paths, "DATA", data)
    monkeypatch.setattr(paths, "RESULTS", results)
    monkeypatch.setenv("AIDETECT_DATA", str(data))  # for subprocesses and notebook kernels
    monkeypatch.setenv("AIDETECT_RESULTS", str(results))
    return data, results


def textured(rng: np.random.Generator, size: int, fake: bool) -> np.ndarray:
    """A random image; FAKE ones carry a faint periodic pattern (a stand-in for artefacts)."""
    img = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    if fake:
        img[::2, ::2] = img[::2, ::2] * 0.5 + 100
    return img.clip(0, 255).astype(np.uint8)


def write_dataset(root: Path, n_per_class: int = 12, size: int = 32, layout: str = "cifake",
                  seed: int = 0, suffix: str = ".png") -> Path:
    """Write a tiny dataset in CIFAKE's (``train|test/REAL|FAKE``) or the shoes layout."""
    rng = np.random.default_rng(seed)
    for label, fake in (("REAL", False), ("FAKE", True)):
        if layout == "cifake":
            folders = {root / "train" / label: n_per_class, root / "test" / label: n_per_class // 2}
        else:
            folders = {root / ("ai-midjourney" if fake else "real"): n_per_class}
        for folder, n in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(textured(rng, size, fake)).save(folder / f"{label.lower()}{i:03d}{suffix}")
    return root


@pytest.fixture
def tiny_cifake(tmp_path) -> Path:
    return write_dataset(tmp_path / "tiny_cifake", n_per_class=16)


def train_tiny_detector(root: Path, dataset: str, model: str = "fast", **options) -> dict:
    """A 1-epoch ``model`` (default `fast`, width 8) detector for ``dataset``, trained on a
    tiny set written in CIFAKE's layout, with data/ and results/ under ``root``; the global
    torch state (threads, determinism) that training sets is restored. Returns root,
    checkpoint, source and cache."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "DATA", root / "data")
        mp.setattr(paths, "RESULTS", root / "results")
        source = root / "source"
        if not source.is_dir():
            write_dataset(source, n_per_class=16)
        cache = prepare(dataset, source, progress=False)
        options = options or ({"width": 8} if model == "fast" else {})
        config = TrainConfig(dataset=dataset, model=model, epochs=1, batch_size=16, device="cpu",
                             threads=1, cpu_amp=False, **options)  # no speed probe: same result every run
        result = fit(cache, config, progress=False)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    return {"root": root, "checkpoint": result.checkpoint, "source": source, "cache": cache}


def point_paths_at(monkeypatch: pytest.MonkeyPatch, tree: dict) -> dict:
    """helpers.core.paths pointed at the data/ and results/ of a :func:`train_tiny_detector` tree."""
    monkeypatch.setattr(paths, "RESULTS", tree["root"] / "results")
    monkeypatch.setattr(paths, "DATA", tree["root"] / "data")
    return tree


def shared_path(name: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared CI data is optional)")
    return path
