"""CIFAKE's own layout through the data step: names with spaces and parentheses, both official
splits, files repeated across splits and inside one class, categories in the file names."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers.data.cache import find_cache, prepare
from helpers.data.datasets import category_of, get_spec
from tests.conftest import textured


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


@pytest.fixture
def cifake_zip(tmp_path):
    """A CIFAKE-shaped archive: per split and class, files ``N (k).jpg`` (k = category) and a
    few ``N.jpg`` (category 1); two test fakes repeat train fakes byte for byte, one train
    fake repeats another train fake, one test real repeats another test real."""
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {}
    for split, n in (("train", 30), ("test", 10)):
        for label in ("REAL", "FAKE"):
            for i in range(n):
                k = i % 10 + 1
                name = f"{i}.jpg" if k == 1 else f"{i} ({k}).jpg"
                members[f"{split}/{label}/{name}"] = _jpeg(textured(rng, 32, label == "FAKE"))
    members["test/FAKE/3 (4).jpg"] = members["train/FAKE/3 (4).jpg"]  # leaked: same bytes
    members["test/FAKE/5 (6).jpg"] = members["train/FAKE/7 (8).jpg"]  # leaked, other name
    members["train/FAKE/9 (10).jpg"] = members["train/FAKE/2 (3).jpg"]  # repeat inside train
    members["test/REAL/4 (5).jpg"] = members["test/REAL/6 (7).jpg"]  # repeat inside test
    path = tmp_path / "cifake-v3.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
    return path


def test_the_data_step_reads_cifake_names_counts_and_removes_the_leaked_test_files(project_dirs, cifake_zip):
    cache = prepare("cifake", cifake_zip, seed=0, progress=False)
    assert cache.meta["official_split"] and cache.meta["n_images"] == 80
    counts = cache.counts()
    # train+val keep every one of the 60 train files (the repeat inside train stays in train
    # or, if carved into val, is removed from val as a copy of train)
    assert counts.loc["test", "FAKE"] == 8 and counts.loc["test", "REAL"] == 10
    removed = set(cache.files[cache.removed_from("test")])
    assert removed == {"test/FAKE/3 (4).jpg", "test/FAKE/5 (6).jpg"}
    report = cache.report()
    listed = report[report["reason"].str.startswith("removed from test")]
    assert set(listed["file"]) == removed and (listed["action"] == "removed").all()
    assert "test/REAL/6 (7).jpg" in set(report["file"])  # the repeat inside test is listed, kept
    protocols = cache.test_protocols()
    assert len(protocols["published"]) == 20 and len(protocols["clean"]) == 18
    assert set(cache.files[protocols["published"]]) == {n for n in cache.files if n.startswith("test/")}


def test_categories_come_from_the_file_names(project_dirs, cifake_zip):
    cache = prepare("cifake", cifake_zip, seed=0, progress=False)
    spec = get_spec("cifake")
    found = {str(f): category_of(str(f), spec) for f in cache.files}
    assert found["train/REAL/0.jpg"] == "airplane"  # no suffix: class 1
    assert found["train/FAKE/1 (2).jpg"] == "automobile"
    assert found["test/REAL/9 (10).jpg"] == "truck"
    assert category_of("train/REAL/5 (11).jpg", spec) is None  # outside 1..10: not guessed
    assert category_of("real/a (3).jpg", get_spec("sneakers")) is None


def test_find_cache_returns_the_latest_cache_of_a_dataset(project_dirs, cifake_zip):
    assert find_cache("cifake") is None
    cache = prepare("cifake", cifake_zip, seed=0, progress=False)
    assert find_cache("cifake").path == cache.path
    assert find_cache("cifake", seed=1) is None
