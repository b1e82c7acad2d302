"""Small and imbalanced datasets: both classes in every split whenever the stated minimum is
met, or a message stating the true minimum (and no cache written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.data.cache import prepare
from helpers.data.datasets import DatasetError
from helpers.data.split import assign_split, split_counts


def _shoes(root: Path, real: int, fake: int) -> Path:
    """The bad-inputs example 22's idea: a few real photos, many generated images."""
    rng = np.random.default_rng(4)
    for cls, n in (("real", real), ("ai-midjourney", fake)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")
    return root


def _no_cache(data_dir: Path, dataset: str) -> bool:
    folder = data_dir / "processed" / dataset
    return not folder.exists() or not any(folder.iterdir())


def test_four_real_and_forty_fake_get_both_classes_in_every_split(project_dirs, tmp_path):
    cache = prepare("sneakers", _shoes(tmp_path / "set", 4, 40), progress=False)
    counts = cache.meta["counts"]
    assert all(n >= 1 for split in counts.values() for n in split.values()), counts
    assert sum(counts[s]["REAL"] for s in counts) == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_imbalance_that_meets_the_minimum_is_split_with_both_classes(seed):
    for real in (3, 4, 5, 7):
        for fake in (3, 10, 40, 400):
            for labels in (np.repeat([0, 1], [real, fake]), np.repeat([0, 1], [fake, real])):
                split = assign_split(labels, None, seed, 0.1, 0.15)
                counts = split_counts(labels, split)
                assert all(n >= 1 for part in counts.values() for n in part.values()), (real, fake, counts)


def test_with_official_folders_two_train_images_a_class_are_enough():
    labels = np.repeat([0, 1, 0, 1], [2, 30, 1, 5])
    official = np.repeat(["train", "train", "test", "test"], [2, 30, 1, 5])
    counts = split_counts(labels, assign_split(labels, official, 0, 0.1, 0.15))
    assert all(n >= 1 for part in counts.values() for n in part.values()), counts


def test_below_the_minimum_the_message_states_the_true_minimum(project_dirs, tmp_path):
    with pytest.raises(DatasetError, match="every class needs at least 3 images") as err:
        prepare("sneakers", _shoes(tmp_path / "two", 2, 40), progress=False)
    assert "Nothing was trained or saved" in str(err.value)
    rng = np.random.default_rng(0)
    root = tmp_path / "official"
    for rel, n in (("train/REAL", 1), ("train/FAKE", 10), ("test/REAL", 2), ("test/FAKE", 2)):
        (root / rel).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / rel / f"{i}.png")
    with pytest.raises(DatasetError, match=r"at least 1 image in test/ and 2 in train/"):
        prepare("cifake", root, progress=False)
    assert _no_cache(project_dirs[0], "sneakers") and _no_cache(project_dirs[0], "cifake")
