"""The report's columns are declared once (helpers/evaluation/columns.py): the metrics CSV,
notebook 05's tables, the results index and the README's table all follow the declaration."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from helpers import report
from helpers.evaluation import columns, compare, metrics
from helpers.evaluation.columns import INDEX, NOTEBOOK, README, Column


def test_a_column_writes_its_value_and_interval_in_one_cell():
    row = {"accuracy": 0.97930, "ci_low": 0.97732, "ci_high": 0.98124, "n_test": 19622,
           "train_seconds": 1226.3, "auc": float("nan"), "model": "seed_cnn"}
    accuracy = Column("accuracy", "test accuracy", "percent", ci=("ci_low", "ci_high"))
    assert accuracy.text(row) == "97.93 % (97.73–98.12)"
    assert accuracy.text({"accuracy": 0.5}) == "50.00 %"  # an older file without its interval
    assert Column("n_test", "test images", "count").text(row) == "19,622"
    assert Column("train_seconds", "training time", "duration").text(row) == "20 min"
    assert Column("auc", "AUC").text(row) == "–" and Column("f1", "F1").text(row) == "–"
    assert Column("model", "model", "text").text(pd.Series(row)) == "seed_cnn"
    with pytest.raises(ValueError, match="format 'percentage'"):
        Column("x", "x", "percentage")


def test_every_place_reads_the_declaration():
    names = [c.name for c in columns.COLUMNS]
    assert len(names) == len(set(names)), "a column declared twice"
    assert [c.name for c in columns.shown(README)] == ["model", "accuracy", "auc", "n_test"]
    assert compare.shown_names()[:3] == ["accuracy", "ci_low", "ci_high"]  # notebook 05's `columns`
    assert "ci_low" not in {c.name for c in columns.shown(INDEX)}  # the interval shares accuracy's cell


def _stub_detector(tmp_path):
    """Just what evaluate_detector reads of a Detector: P(FAKE) is the mean brightness."""
    import torch

    class Stub:
        name = architecture = "stub"
        image_size, train_seconds, val_accuracy, data_fingerprint = 8, 75.0, 0.75, "abc"
        metrics, config, path = {"val_acc": 0.75, "val_loss": 0.5}, {}, tmp_path / "stub.pt"
        model = torch.nn.Linear(2, 1)

        def predict_proba(self, images, device="cpu", batch_size=None):
            return images.mean(axis=(1, 2, 3)) / 255.0

        def decision_threshold(self, threshold=None):
            return 0.5 if threshold is None else threshold

    return Stub()


def test_adding_a_metric_is_one_declared_column(monkeypatch, project_dirs, tmp_path):
    """Issue #33: a metric shown in notebook 05, the README's table and the results index took
    8-9 hand-edited files, six of them lists of columns. Now: computed in evaluation/metrics.py,
    declared in evaluation/columns.py (and named in evaluation/text.py's summary if it belongs
    there): at most three files. The CSV, notebook 05's tables, the index and the README follow."""
    monkeypatch.setattr(columns, "COLUMNS", columns.COLUMNS + (
        Column("mcc", "Matthews correlation", where=(NOTEBOOK, INDEX, README)),))
    computed = metrics.classification_metrics

    def with_mcc(y_true, p_fake, threshold=0.5, *args, **kwargs):  # what metrics.py would return
        row = computed(y_true, p_fake, threshold, *args, **kwargs)
        return {**row, "mcc": skm.matthews_corrcoef(y_true, metrics.predicted_labels(p_fake, threshold))}

    monkeypatch.setattr(compare, "classification_metrics", with_mcc)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    images = (rng.integers(0, 120, (20, 8, 8, 3)) + 110 * labels[:, None, None, None]).astype(np.uint8)
    result = compare.evaluate_detector(_stub_detector(tmp_path), images, labels,
                                       [f"{i}.png" for i in range(20)], n_bootstrap=50)
    cache = SimpleNamespace(meta={"is_demo": True}, fingerprint="abc")
    csv_path, _ = compare.write_performance("demo", [result], cache, {}, {"best_model": "stub"})
    value = f"{result.metrics['mcc']:.4f}"

    assert "mcc" in pd.read_csv(csv_path).columns  # the metrics CSV
    assert "mcc" in compare.shown_names()  # notebook 05's headline table (its `columns`)
    assert compare.comparison_table([result]).loc["stub", "Matthews correlation"] == value  # its comparison
    assert "<th>Matthews correlation</th>" in report.dataset_index("demo").read_text()  # results/demo/index.html
    assert value in report.dataset_index("demo").read_text()
    top = report.top_index().read_text()  # results/index.html
    assert "<th>Matthews correlation</th>" in top and value in top
    readme = report.readme_table()  # the README's table
    assert "| Matthews correlation |" in readme and f"| {value} |" in readme
