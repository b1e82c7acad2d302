"""Notebook 05's sections run without papermill (helpers.evaluation.session.Evaluation) on a
demo-layout set with a tiny trained detector, and write what the notebook writes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from helpers.core.parameters import declared_parameters
from helpers.core.repro import json_ready
from helpers.evaluation.session import NOTEBOOK, Evaluation, EvaluationParameters, Section
from tests.conftest import point_paths_at, train_tiny_detector

#: The sections in the notebook's order (the headline returns the best result, not a Section).
SECTIONS = ["protocols", "per_class", "curves", "calibration", "mistakes", "per_category", "colour",
            "near_duplicates", "robustness", "severity", "cross_generator", "comparison", "cross_dataset",
            "domain_check", "write_summary"]


def test_the_parameters_are_the_notebooks_own():
    """Every parameter the notebook declares is recorded, with the notebook's defaults."""
    params = EvaluationParameters.from_notebook(N_BOOTSTRAP=7)
    assert list(vars(params)) == declared_parameters(NOTEBOOK)
    assert params.N_BOOTSTRAP == 7 and params.DATASET == "demo" and params.THRESHOLD is None
    namespace = {**vars(params), "unrelated": 1}
    assert EvaluationParameters.from_namespace(namespace) == params
    del namespace["STORAGE"]
    with pytest.raises(KeyError, match="STORAGE"):
        EvaluationParameters.from_namespace(namespace)
    with pytest.raises(ValueError, match="NOT_A_PARAMETER"):
        EvaluationParameters.from_notebook(NOT_A_PARAMETER=1)


def test_a_section_shows_its_items_in_order(capsys, monkeypatch):
    display = pytest.importorskip("IPython.display")
    shown_items = []
    monkeypatch.setattr(display, "display", lambda item: shown_items.append(item) or print("[shown]"))
    table = pd.DataFrame({"a": [1]})
    shown = Section().add("print", "first").add("markdown", "**second**").add("table", table)
    shown._ipython_display_()
    assert capsys.readouterr().out == "first\n[shown]\n[shown]\n"
    assert shown_items[0].data == "**second**" and shown_items[1] is table and shown.of("table") == [table]


@pytest.fixture
def evaluation(tmp_path, monkeypatch):
    """An Evaluation of the demo (a demo-layout copy) with a tiny `fast` detector; torch's
    threads and determinism, which the notebook's setup sets, are restored afterwards."""
    import torch

    tree = point_paths_at(monkeypatch, train_tiny_detector(tmp_path, "demo"))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    params = EvaluationParameters.from_notebook(DATA_SOURCE=str(tree["source"]), DEVICE="cpu", N_BOOTSTRAP=50,
                                                GALLERY_SIZE=3, ROBUSTNESS_MAX_IMAGES=12)
    ensured = []
    yield SimpleNamespace(ev=Evaluation(params, ensure=lambda *args: ensured.append(args)),
                          results=tmp_path / "results" / "demo", ensured=ensured)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.mark.slow
def test_every_section_writes_what_notebook_05_writes(evaluation):
    ev, folder = evaluation.ev, evaluation.results
    shown = {"detectors": ev.detectors()}
    assert len(evaluation.ensured) == 1 and [r.name for r in ev.results] == ["fast"]
    assert ev.headline() is ev.results[0]
    for name in SECTIONS:
        shown[name] = getattr(ev, name)()
        assert isinstance(shown[name], Section), name
        shown[name]._ipython_display_()
    for name in ("test_protocols", "colour_check", "near_duplicate_check", "robustness", "robustness_severity",
                 "cross_dataset", "cross_dataset_unseen", "domain_check"):
        written, table = pd.read_csv(folder / f"{name}.csv"), ev.tables[name]
        assert list(written.columns) == list(table.columns) and len(written) == len(table) > 0, name
    assert not (folder / "per_category.csv").exists() and shown["per_category"].items == []  # no categories
    assert not (folder / "cross_generator.csv").exists()  # no GAN export: said so
    assert "No GAN export" in shown["cross_generator"].of("markdown")[0]
    figures = {p.stem for p in (folder / "evaluation").glob("*.png")}
    assert {"confusion_fast", "roc_curve", "pr_curve", "calibration", "mistakes_fast", "robustness",
            "severity_blur", "cross_dataset", "domain_check"} <= figures
    assert (folder / "confusion_matrix.png").exists()
    assert len(shown["per_class"].of("figure")) == 1 and len(shown["robustness"].of("table")) == 1

    metrics = pd.read_csv(folder / "performance_metrics.csv")
    assert metrics["model"].tolist() == ["fast"] and metrics["is_demo"].all()
    payload = json.loads((folder / "performance_metrics.json").read_text())
    assert list(payload["config"]) == sorted([*declared_parameters(NOTEBOOK), "device"])
    assert payload["config"]["N_BOOTSTRAP"] == 50 and payload["config"]["device"] == "cpu"
    assert payload["best_model"] == "fast" and payload["per_category"] is None
    assert payload["cross_generator"] is None and len(payload["robustness"]) == 9
    assert payload["test_protocols"] == json_ready(ev.tables["test_protocols"].to_dict(orient="records"))
    assert "DEMO" in shown["write_summary"].of("markdown")[0]


@pytest.mark.slow
def test_sections_without_robustness_and_out_of_order(evaluation, monkeypatch):
    """ROBUSTNESS=False skips both robustness sections; a section run first scores the detectors."""
    ev = evaluation.ev
    monkeypatch.setattr(ev, "params", EvaluationParameters(**{**vars(ev.params), "ROBUSTNESS": False}))
    assert ev.colour().of("table") and ev.pairs is not None  # detectors() ran on demand
    assert ev.robustness().items == [] and ev.severity().items == []
    assert not (evaluation.results / "robustness.csv").exists()
    ev.write_summary()
    payload = json.loads((evaluation.results / "performance_metrics.json").read_text())
    assert payload["robustness"] is None and payload["config"]["ROBUSTNESS"] is False
