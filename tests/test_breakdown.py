"""Notebook 05's breakdowns: the two test protocols, categories, mistakes of each kind, accuracy
against training time, and the cross-dataset matrix."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.core import paths
from helpers.core.detector import Detector
from helpers.data.datasets import DROPPED, get_spec
from helpers.evaluation import breakdown, cross_dataset
from helpers.evaluation.compare import ModelResult, evaluate_detector
from tests.conftest import train_tiny_detector


def _result(y, p, files, threshold=0.5, name="m") -> ModelResult:
    detector = SimpleNamespace(name=name)
    metrics = {"threshold": threshold}
    return ModelResult(detector, np.asarray(y), np.asarray(p, dtype=float), np.asarray(files), metrics)


def test_per_category_accuracy_and_mistakes_of_each_kind():
    spec = get_spec("cifake")
    files = ["test/REAL/0.jpg", "test/REAL/1 (2).jpg", "test/REAL/2 (2).jpg",
             "test/FAKE/0.jpg", "test/FAKE/1 (2).jpg", "test/FAKE/2 (2).jpg"]
    y = [0, 0, 0, 1, 1, 1]
    p = [0.1, 0.9, 0.2, 0.8, 0.3, 0.6]  # wrong: REAL 1 (2) (p .9) and FAKE 1 (2) (p .3)
    result = _result(y, p, files)
    table = breakdown.per_category_table(result, spec, n_bootstrap=100).set_index(["category", "class"])
    assert table.loc[("airplane", "REAL"), "accuracy"] == 1.0
    assert table.loc[("automobile", "REAL"), ["n_images", "n_errors"]].tolist() == [2, 1]
    assert table.loc[("automobile", "FAKE"), "accuracy"] == 0.5
    assert "automobile" in breakdown.describe_categories(table.reset_index())
    kinds = breakdown.mistakes_by_kind(result, k=5)
    assert kinds["REAL called FAKE"]["file"].tolist() == ["test/REAL/1 (2).jpg"]
    assert kinds["FAKE called REAL"]["file"].tolist() == ["test/FAKE/1 (2).jpg"]
    # at another threshold the verdicts move with it
    assert breakdown.mistakes_by_kind(_result(y, p, files, threshold=0.95))["FAKE called REAL"].shape[0] == 3
    assert breakdown.per_category_table(result, get_spec("sneakers")).empty


def test_time_to_reach_reads_the_training_histories(project_dirs):
    _, results = project_dirs
    folder = results / "cifake" / "models"
    folder.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2, 3], "seconds": [10.0, 10.0, 10.0], "val_acc": [0.9, 0.96, 0.97]}
                 ).to_csv(folder / "a_history.csv", index=False)
    pd.DataFrame({"epoch": [1, 2], "seconds": [5.0, 5.0], "val_acc": [0.8, 0.85]}
                 ).to_csv(folder / "b_history.csv", index=False)
    curves = breakdown.training_curves("cifake", ["a", "b", "missing"])
    assert curves.groupby("model")["seconds"].max().to_dict() == {"a": 30.0, "b": 10.0}
    reached = breakdown.time_to_reach(curves, 0.95).set_index("model")
    assert reached.loc["a", ["epoch", "seconds"]].tolist() == [2, 20.0]
    assert np.isnan(reached.loc["b", "seconds"]) and reached.loc["b", "best_val_acc"] == 0.85


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """A tiny demo detector (trained) and a tiny CIFAKE-layout dataset of another source."""
    root = tmp_path_factory.mktemp("cross")
    return train_tiny_detector(root, "demo")


def test_the_protocols_add_the_removed_test_files(two_datasets, monkeypatch):
    monkeypatch.setattr(paths, "DATA", two_datasets["root"] / "data")
    cache = two_datasets["cache"]
    detector = Detector.load(two_datasets["checkpoint"])
    test = cache.indices("test")
    # pretend the first two test images had leaked: the clean split leaves them out
    cache.split[test[:2]] = DROPPED
    report = pd.DataFrame({"file": cache.files[test[:2]], "action": "removed",
                           "reason": "removed from test: pixels identical to train file x"})
    monkeypatch.setattr(type(cache), "report", lambda self: report)
    images, labels = cache.part("test")
    result = evaluate_detector(detector, images, labels, cache.files[cache.indices("test")], n_bootstrap=50)
    table = breakdown.protocol_table(result, cache, n_bootstrap=50).set_index("protocol")
    assert table.loc["published", "n_test"] == len(test) and table.loc["clean", "n_test"] == len(test) - 2
    assert table.loc["clean", "accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert "removing the 2" in breakdown.describe_protocols(table.reset_index())


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_cross_dataset_matrix_has_one_row_per_pair_and_marks_the_diagonal(two_datasets, monkeypatch):
    monkeypatch.setattr(paths, "DATA", two_datasets["root"] / "data")
    monkeypatch.setattr(paths, "RESULTS", two_datasets["root"] / "results")
    detectors, skipped = cross_dataset.dataset_detectors(["demo", "cifake"])
    assert [d.name for d in detectors] == ["demo/fast"]
    assert skipped and skipped[0][0] == "cifake"
    own = cross_dataset.test_source("demo", max_images=10)
    assert isinstance(own, cross_dataset.Source) and len(own.labels) == 10
    assert np.unique(own.labels).tolist() == [0, 1]
    assert "no cache of cifake" in cross_dataset.test_source("cifake")
    rng = np.random.default_rng(1)
    other = cross_dataset.Source("other test", ["a.png", "b.png", "c.png", "d.png"],
                                 np.array([0, 0, 1, 1]),
                                 [_png(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(4)])
    table = cross_dataset.matrix(detectors, [own, other])
    assert table.shape[0] == 2 and table["trained_on_source"].tolist() == [True, False]
    assert table.set_index("source").loc["other test", ["n_real", "n_fake"]].tolist() == [2, 2]
    assert ((table["auc"] >= 0) & (table["auc"] <= 1)).all()
    assert (table["threshold"] == Detector.load(two_datasets["checkpoint"]).threshold).all()
    assert "demo/fast" in cross_dataset.describe(table)
