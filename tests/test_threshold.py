"""The decision threshold is chosen on validation, saved with the detector and used by every
consumer; CPU precision follows a measurement, cached per machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.core import accel, precision_probe
from helpers.core.detector import Detector
from helpers.core.scoring import choose_threshold
from helpers.data.cache import prepare
from helpers.evaluation.compare import evaluate_detector
from helpers.tools import predict
from helpers.training import loop
from helpers.training.config import default_config
from helpers.training.loop import fit
from tests.conftest import write_dataset


def test_the_threshold_maximises_accuracy_and_prefers_one_half_on_ties():
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (0.5, 1.0)
    # the classes overlap 0.5: the cut moves to where they separate
    threshold, accuracy = choose_threshold([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9])
    assert accuracy == 1.0 and 0.6 < threshold <= 0.8
    threshold, accuracy = choose_threshold([0, 0, 0, 1, 1], [0.2, 0.3, 0.55, 0.52, 0.9])
    assert accuracy == 0.8 and threshold in (0.5, 0.535, 0.725)
    with pytest.raises(ValueError, match="as many labels"):
        choose_threshold([], [])


def test_the_threshold_is_the_best_cut_found_by_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(2)  # ties on purpose
    threshold, accuracy = choose_threshold(labels, p)
    grid = np.linspace(0, 1.01, 2021)
    best = max(((p >= t) == labels).mean() for t in grid)
    assert accuracy == pytest.approx(best) == ((p >= threshold) == labels).mean()


def _tiny_cache(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "tiny", n_per_class=40)
    return prepare("demo", source, seed=0, progress=False)


def test_the_threshold_round_trips_through_the_checkpoint_and_is_used(project_dirs, tmp_path):
    cache = _tiny_cache(project_dirs, tmp_path)
    config = default_config("demo", model="fast", width=8, epochs=2, batch_size=32,
                            device="cpu", threads=1, cpu_amp=False)
    result = fit(cache, config, out_dir=tmp_path / "m", progress=False)
    detector = Detector.load(result.checkpoint)
    assert detector.threshold_source == "validation"
    val_images, val_labels = cache.part("val")
    expected, accuracy = choose_threshold(val_labels, detector.predict_proba(val_images))
    assert detector.threshold == expected
    assert torch.load(result.checkpoint, weights_only=True)["threshold_val_acc"] == accuracy
    # predict, the app and notebook 05 read it from there
    assert detector.decision_threshold() == expected
    assert detector.decision_threshold(0.9) == 0.9
    with pytest.raises(ValueError, match="threshold"):
        detector.decision_threshold(1.5)
    table = predict.classify_images([], detector)
    assert table.empty
    test_images, test_labels = cache.part("test")
    scored = evaluate_detector(detector, test_images, test_labels,
                               cache.files[cache.indices("test")], n_bootstrap=50)
    assert scored.threshold == expected and scored.metrics["threshold"] == expected


def test_an_older_checkpoint_without_a_threshold_decides_at_one_half(project_dirs, tmp_path):
    cache = _tiny_cache(project_dirs, tmp_path)
    config = default_config("demo", model="fast", width=8, epochs=1, batch_size=32,
                            device="cpu", threads=1, cpu_amp=False)
    path = fit(cache, config, out_dir=tmp_path / "m", progress=False).checkpoint
    ckpt = torch.load(path, weights_only=True)
    del ckpt["threshold"]
    torch.save(ckpt, path)
    detector = Detector.load(path)
    assert detector.threshold == 0.5 and detector.threshold_source.startswith("default")


def test_cpu_precision_is_measured_once_per_machine_and_model(tmp_path, monkeypatch):
    calls = []

    def measured(build, size, batch, steps=3):
        calls.append((size, batch))
        return {"fp32": 1000.0, "bf16": 1100.0}  # faster, but not by BF16_MIN_SPEED_UP

    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision_probe, "measure_cpu_precision", measured)
    cache_file = tmp_path / "probe.json"
    use, record = precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 64, cache_file)
    assert use is False and record["cached"] is False and calls == [(32, 64)]
    use, record = precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 64, cache_file)
    assert use is False and record["cached"] is True and len(calls) == 1  # reused
    precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 128, cache_file)  # another batch size
    assert len(calls) == 2 and len(json.loads(cache_file.read_text())) == 2
    monkeypatch.setattr(precision_probe, "measure_cpu_precision", lambda *a, **k: {"fp32": 1000.0, "bf16": 1200.0})
    assert precision_probe.choose_cpu_amp(lambda: None, {"model": "other"}, 32, 64, cache_file)[0] is True
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: False)  # emulated bfloat16: never
    assert precision_probe.choose_cpu_amp(lambda: None, {"model": "x"}, 32, 64, cache_file)[0] is False


def test_a_noisy_or_loaded_precision_reading_is_used_once_never_cached(tmp_path, monkeypatch):
    """Issue #33: a probe taken while another job ran chose fp32 and kept it for good."""
    noisy = {"fp32": 595.0, "bf16": 514.0, "readings": {"fp32": [595.0, 420.0, 560.0], "bf16": [514.0, 300.0, 500.0]},
             "load_per_core": 0.5}
    quiet = {"fp32": 1000.0, "bf16": 1400.0, "readings": {"fp32": [990.0, 1000.0, 995.0],
                                                         "bf16": [1390.0, 1400.0, 1380.0]}, "load_per_core": 0.9}
    loaded = {**quiet, "load_per_core": 1.8}  # steady readings, but two tasks per core
    readings = iter([noisy, noisy, loaded, loaded, quiet])
    calls = []

    def measured(build, size, batch, steps=3):
        calls.append(1)
        return next(readings)

    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision_probe, "measure_cpu_precision", measured)
    cache_file = tmp_path / "probe.json"
    use, record = precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 64, cache_file)
    assert use is False and len(calls) == 2  # measured again, still noisy: used for this run only
    assert "disagree" in record["unsteady"] and not cache_file.exists()
    use, record = precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 64, cache_file)
    assert "load average 1.80" in record["unsteady"] and not cache_file.exists() and len(calls) == 4
    use, record = precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 64, cache_file)
    assert use is True and "unsteady" not in record and cache_file.exists()
    use, record = precision_probe.choose_cpu_amp(lambda: None, {"model": "m"}, 32, 64, cache_file)
    assert use is True and record["cached"] is True and len(calls) == 5


def test_the_training_output_shows_the_precision_and_how_to_choose_it(capsys, monkeypatch):
    monkeypatch.setattr(loop, "choose_cpu_amp", lambda *a: (False, {
        "fp32": 595.0, "bf16": 514.0, "cached": False, "unsteady": "fp32 readings disagree"}))
    config = default_config("demo", model="fast", width=8, device="cpu")
    decided, probe = loop._resolve_cpu_amp(config, 32, torch.device("cpu"), 64, announce=True)
    out = capsys.readouterr().out
    assert decided.cpu_amp is False and "CPU precision: fp32" in out and "CPU_AMP" in out
    assert "not kept for later runs: fp32 readings disagree" in out
    forced, probe = loop._resolve_cpu_amp(default_config("demo", model="fast", cpu_amp=True, device="cpu"),
                                          32, torch.device("cpu"), 64, announce=True)
    assert forced.cpu_amp is True and probe is None  # overridden: no probe


def test_the_precision_probe_times_both_precisions_without_moving_the_random_stream():
    from helpers.core.models import build_model

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    rates = precision_probe.measure_cpu_precision(lambda: build_model("fast", 16, width=8), 16, 8, steps=1)
    assert {"fp32", "bf16"} <= set(rates) and min(rates["fp32"], rates["bf16"]) > 0
    assert [len(v) for v in rates["readings"].values()] == [3, 3]
    assert torch.equal(torch.rand(3), before)


def test_training_records_the_precision_it_chose(project_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "choose_cpu_amp", lambda *a: (False, {"fp32": 2.0, "bf16": 1.0, "cached": False}))
    cache = _tiny_cache(project_dirs, tmp_path)
    config = default_config("demo", model="fast", width=8, epochs=1, batch_size=32,
                            device="cpu", threads=1)
    assert config.cpu_amp is None  # measured, not set
    result = fit(cache, config, out_dir=tmp_path / "m", progress=False)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["config"]["cpu_amp"] is False
    assert ckpt["environment"]["cpu_precision_probe"]["fp32"] == 2.0


def test_the_load_a_probe_sees_leaves_out_its_own_threads(monkeypatch):
    """A run that uses every core loads each core by itself: only other jobs' load counts."""
    import os

    import torch

    from helpers.core import precision_probe

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.1, 0.0, 0.0))  # this run alone
    assert precision_probe.load_per_core() == pytest.approx(0.05)
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 0.0, 0.0))  # two more jobs of 2 threads
    assert precision_probe.load_per_core() == pytest.approx(2.0)
    assert "load average 2.00" in precision_probe.probe_problem({"load_per_core": precision_probe.load_per_core()})
