"""The results index and the README's table: the best detector is chosen on validation, as
notebook 05 chooses it, and the README keeps everything outside its generated table."""

from __future__ import annotations

import pandas as pd

from helpers import report


def _metrics(results, dataset: str, rows: list[dict]) -> None:
    folder = results / dataset
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "performance_metrics.csv", index=False)


def test_the_best_row_is_chosen_on_validation_accuracy_then_loss(project_dirs):
    _, results = project_dirs
    _metrics(results, "cifake", [
        {"model": "a", "accuracy": 0.99, "val_accuracy": 0.97, "val_loss": 0.10, "n_test": 10},
        {"model": "b", "accuracy": 0.95, "val_accuracy": 0.98, "val_loss": 0.20, "n_test": 10},
        {"model": "c", "accuracy": 0.96, "val_accuracy": 0.98, "val_loss": 0.15, "n_test": 10}])
    rows = report.best_rows()
    assert [(d, r["model"], ranked) for d, r, ranked in rows] == [("cifake", "c", True)]  # never "a", best on test


def test_older_files_without_validation_figures_are_listed_never_ranked_by_test(project_dirs):
    _, results = project_dirs
    _metrics(results, "sneakers", [{"model": "worse", "accuracy": 0.8, "n_test": 5},
                                   {"model": "better_on_test", "accuracy": 0.9, "n_test": 5}])
    rows = report.best_rows()
    assert [(r["model"], ranked) for _, r, ranked in rows] == [("worse", False), ("better_on_test", False)]
    table = report.readme_table()
    assert table.count("sneakers (not ranked: no validation figures)") == 2


def test_one_rule_chooses_the_best_detector():
    """best_by_validation is the one rule: validation accuracy, then loss; records without
    validation figures are never candidates; ties go to the first listed."""
    from helpers.core.selection import best_by_validation

    records = [{"name": "test_best", "test_acc": 1.0},
               {"name": "a", "val_acc": 0.9, "val_loss": 0.3},
               {"name": "b", "val_acc": 0.9, "val_loss": 0.2},
               {"name": "b2", "val_acc": 0.9, "val_loss": 0.2},
               {"name": "nan", "val_acc": float("nan")}]
    assert best_by_validation(records, lambda r: r)["name"] == "b"
    assert best_by_validation(records[:1] + records[-1:], lambda r: r) is None


def test_the_readme_table_is_replaced_and_nothing_else(project_dirs, tmp_path):
    _, results = project_dirs
    _metrics(results, "demo", [{"model": "fast", "accuracy": 0.5, "val_accuracy": 0.5, "val_loss": 0.7,
                                "ci_low": 0.4, "ci_high": 0.6, "auc": 0.5, "n_test": 8}])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\noutro\n")
    assert report.update_readme(readme) is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| demo (DEMO) | fast | 50.00 % (40.00–60.00) |" in text  # the interval in accuracy's cell
    pd.DataFrame([{"model": "fast", "condition": c, "accuracy": a} for c, a in
                  (("clean", 0.5), ("JPEG q50", 0.45), ("blur sigma 1", 0.4))]).to_csv(
        results / "demo" / "robustness.csv", index=False)
    assert report.update_readme(readme) is True
    assert "| 40.0 % (blur sigma 1) |" in readme.read_text()
    assert report.update_readme(readme) is False  # unchanged the second time


def test_the_index_reads_well_and_rebuilds_the_same(project_dirs):
    """Headings a reader knows, accuracy and its interval in one cell, the findings first, each
    figure with a caption and a sentence; no stamp or machine path, so a rebuild changes nothing."""
    import json

    from PIL import Image

    _, results = project_dirs
    row = {"model": "fast", "accuracy": 0.9793, "ci_low": 0.9773, "ci_high": 0.9812, "ci_method": "percentile bootstrap",
           "auc": 0.9975, "average_precision": 0.997, "n_test": 19622, "n_errors": 406, "threshold": 0.51,
           "ece": 0.0485, "test_loss": 0.0977, "val_accuracy": 0.98, "val_loss": 0.1, "train_seconds": 1226.0}
    _metrics(results, "cifake", [row])
    (results / "cifake" / "performance_metrics.json").write_text(json.dumps({"best_model": "fast", "models": [row]}))
    (results / "cifake" / "evaluation").mkdir()
    Image.new("RGB", (8, 8)).save(results / "cifake" / "evaluation" / "roc_curve.png")
    page = report.dataset_index("cifake").read_text()
    assert "<td class='num'>97.93&nbsp;% (97.73–98.12)</td>" in page
    for raw in ("ci_low", "average_precision", "train_seconds", "inference_images_per_s", str(results)):
        assert raw not in page, raw
    assert "<th>average precision</th>" in page and "<td class='num'>20 min</td>" in page
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Test metrics</h2>")
    assert "<b>fast</b> (chosen on validation accuracy) classifies 97.93% of the 19,622 images of the test split" in page
    assert "<b>ROC curves</b> True- against false-positive rate" in page
    top = report.top_index().read_text()
    assert "<th>test accuracy (95&nbsp;%&nbsp;CI)</th>" in top and "97.93&nbsp;% (97.73–98.12)" in top
    assert report.dataset_index("cifake").read_text() == page and report.top_index().read_text() == top
