"""Evaluation: metrics equal scikit-learn's, deterministic intervals, robustness transforms."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from helpers.core.detector import Detector, detector_paths
from helpers.core.postprocess import (
    centre_crop,
    gaussian_blur,
    jpeg_compress,
    perturbations,
    perturbed_sets,
    rescale,
)
from helpers.core.repro import json_ready, write_csv
from helpers.core.stats import difference_ci, proportion_ci, stratified_subset
from helpers.evaluation import columns
from helpers.evaluation.compare import (
    colour_check,
    cross_generator,
    cross_generator_frame,
    evaluate_detector,
    fingerprint_problem,
    match_caches,
    near_duplicate_check,
    write_performance,
)
from helpers.evaluation.metrics import (
    classification_metrics,
    classification_table,
    confident_mistakes,
    confusion_tables,
    expected_calibration_error,
)
from helpers.evaluation.robustness import high_frequency_energy, resize_to, robustness_table
from helpers.evaluation.text import (
    describe_colour_check,
    describe_cross_generator,
    describe_near_duplicate_check,
    summary,
)


@pytest.fixture
def predictions():
    """Hand-made labels and probabilities: 8 REAL, 8 FAKE, three mistakes at threshold 0.5."""
    y = np.array([0] * 8 + [1] * 8)
    p = np.array([0.02, 0.10, 0.20, 0.35, 0.45, 0.55, 0.70, 0.05,   # two REAL called FAKE
                  0.97, 0.90, 0.80, 0.65, 0.51, 0.50, 0.25, 0.99])  # 0.50 is FAKE, 0.25 missed
    return y, p


def test_metrics_equal_scikit_learn(predictions):
    y, p = predictions
    pred = (p >= 0.5).astype(int)
    m = classification_metrics(y, p, threshold=0.5, n_bootstrap=200)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred)) == pytest.approx(13 / 16)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["test_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["test_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert (m["n_test"], m["n_real"], m["n_fake"], m["n_errors"]) == (16, 8, 8, 3)
    assert m["threshold"] == 0.5


def test_report_and_confusion_match_scikit_learn(predictions):
    y, p = predictions
    pred = (p >= 0.5).astype(int)
    table = classification_table(y, p)
    report = skm.classification_report(y, pred, output_dict=True)
    assert list(table.index) == ["REAL", "FAKE", "accuracy", "macro avg", "weighted avg"]
    for row, key in (("REAL", "0"), ("FAKE", "1"), ("macro avg", "macro avg"),
                     ("weighted avg", "weighted avg")):
        for col in ("precision", "recall", "f1-score", "support"):
            assert table.loc[row, col] == pytest.approx(report[key][col])
    counts, normalised = confusion_tables(y, p)
    np.testing.assert_array_equal(counts.to_numpy(), skm.confusion_matrix(y, pred))
    np.testing.assert_allclose(normalised.to_numpy().sum(axis=1), 1.0)
    assert counts.to_numpy().tolist() == [[6, 2], [1, 7]]


def test_ece_is_weighted_gap_of_the_calibration_curve(predictions):
    y, p = predictions
    frac, _ = calibration_curve(y, p, n_bins=10)
    ece = expected_calibration_error(y, p, n_bins=10)
    # by hand: bins of width 0.1, closed on the right as scikit-learn's (0.5 lies in (0.4, 0.5]),
    # weight = share of samples in the bin
    edges = np.linspace(0, 1, 11)
    gaps = []
    for lo, hi in itertools.pairwise(edges):
        inside = (p <= hi) & ((p > lo) if lo > 0 else (p >= lo))
        if inside.any():
            gaps.append(inside.mean() * abs(y[inside].mean() - p[inside].mean()))
    assert ece == pytest.approx(sum(gaps))
    assert len(gaps) == len(frac)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert expected_calibration_error([0, 0], [0.95, 0.95]) == pytest.approx(0.95)


def test_bootstrap_ci_deterministic_and_contains_estimate():
    rng = np.random.default_rng(1)
    correct = (rng.random(300) < 0.9).astype(int)
    a = proportion_ci(correct, n_resamples=500, seed=3)
    b = proportion_ci(correct, n_resamples=500, seed=3)
    c = proportion_ci(correct, n_resamples=500, seed=4)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.estimate == pytest.approx(correct.mean())
    assert a.low <= a.estimate <= a.high
    assert 0.8 < a.low < a.high < 0.97
    assert a.method == "percentile bootstrap"


def test_perfect_accuracy_gets_an_exact_interval_not_a_point():
    iv = proportion_ci(np.ones(259), seed=0)
    assert iv.estimate == 1.0 and iv.high == 1.0
    assert iv.low == pytest.approx(0.98586, abs=1e-4)  # Clopper-Pearson, 259 of 259
    assert "Clopper-Pearson" in iv.method
    with pytest.raises(ValueError):
        proportion_ci([0.5, 1.0])
    with pytest.raises(ValueError):
        proportion_ci([])


def test_difference_ci():
    a = np.r_[np.ones(40), np.zeros(60)]
    b = np.r_[np.ones(95), np.zeros(5)]
    d = difference_ci(a, b, n_resamples=500, seed=0)
    assert d.estimate == pytest.approx(-0.55)
    assert d.low < d.estimate < d.high < 0
    assert d == difference_ci(a, b, n_resamples=500, seed=0)
    assert np.isnan(difference_ci(np.ones(5), np.ones(7)).low)


def test_confident_mistakes(predictions):
    y, p = predictions
    files = np.array([f"f{i}.png" for i in range(16)])
    table = confident_mistakes(y, p, files, k=5)
    assert list(table["file"]) == ["f14.png", "f6.png", "f5.png"]  # 1 - 0.25, 0.70, 0.55
    assert list(table["true"]) == ["FAKE", "REAL", "REAL"]
    assert table["confidence"].tolist() == pytest.approx([0.75, 0.70, 0.55])
    none = confident_mistakes(np.array([0, 1]), np.array([0.1, 0.9]), ["a", "b"])
    assert none.empty


def _photo_like(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus fine noise: something JPEG and blur visibly change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + k) * 60 + 128 + 40 * np.cos(5 * yy * (k + 1)) for k in range(3)], -1)
    noise = rng.normal(0, 25, (n, size, size, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def test_robustness_transforms_change_images_as_intended():
    images = _photo_like()
    energy = high_frequency_energy(images)
    for name, (perturbation, out) in perturbed_sets(images).items():
        assert out.shape == images.shape and out.dtype == np.uint8, name
        if perturbation is not None:
            assert not np.array_equal(out, images), f"{name} left the images unchanged"
    assert [p.name for p in perturbations()] == [
        "JPEG q95", "JPEG q75", "JPEG q50", "blur sigma 0.5", "blur sigma 1", "blur sigma 2",
        "rescale x0.5", "centre crop 75%"]

    q95, q50 = jpeg_compress(images, 95), jpeg_compress(images, 50)
    err95 = np.abs(q95.astype(int) - images).mean()
    err50 = np.abs(q50.astype(int) - images).mean()
    assert 0 < err95 < err50  # lower quality, larger change
    blurs = [high_frequency_energy(gaussian_blur(images, s)) for s in (0.5, 1, 2)]
    assert energy > blurs[0] > blurs[1] > blurs[2]
    assert high_frequency_energy(rescale(images, 0.5)) < energy


def test_centre_crop_is_crop_then_resize():
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 4:28, 4:28] = 255  # white square with a 4-pixel black frame
    out = centre_crop(img, 0.75)  # the central 24x24 is all white: the frame is cut away
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.min() == 255
    expected = Image.fromarray(img[0]).crop((4, 4, 28, 28)).resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(out[0], np.asarray(expected))
    with pytest.raises(ValueError):
        jpeg_compress(img[0], 90)  # one image, not a batch


def test_jpeg_transform_is_pillow_jpeg():
    images = _photo_like(2)
    out = jpeg_compress(images, 75)
    import io

    buffer = io.BytesIO()
    Image.fromarray(images[1]).save(buffer, format="JPEG", quality=75)
    np.testing.assert_array_equal(out[1], np.asarray(Image.open(buffer).convert("RGB")))


def test_resize_to_keeps_matching_sizes():
    images = _photo_like(3, 64)
    assert resize_to(images, 64) is images
    small = resize_to(images, 32)
    assert small.shape == (3, 32, 32, 3) and small.dtype == np.uint8


def test_describe_cross_generator_follows_the_numbers():
    iv = proportion_ci
    low_gan = {"model": "m", "n_gan": 200, "gan_resolution": 32, "resized": False,
               "gan_flag_rate": iv(np.r_[np.ones(20), np.zeros(180)]),
               "own_fake_flag_rate": iv(np.r_[np.ones(195), np.zeros(5)]),
               "real_flag_rate": iv(np.r_[np.ones(8), np.zeros(192)]),
               "difference": difference_ci(np.r_[np.ones(20), np.zeros(180)],
                                              np.r_[np.ones(195), np.zeros(5)])}
    text = describe_cross_generator(low_gan)
    assert "lower" in text and "10.00%" in text and "specific to the generator" in text
    same = dict(low_gan, gan_flag_rate=iv(np.r_[np.ones(196), np.zeros(4)]),
                difference=difference_ci(np.r_[np.ones(196), np.zeros(4)],
                                            np.r_[np.ones(195), np.zeros(5)]))
    assert "not distinguishable from zero" in describe_cross_generator(same)
    gan, own = np.r_[np.ones(386), np.zeros(14)], np.ones(400)
    slightly = dict(low_gan, gan_flag_rate=iv(gan), own_fake_flag_rate=iv(own),
                    difference=difference_ci(gan, own))
    assert "largely transfers" in describe_cross_generator(slightly)
    frame = cross_generator_frame([low_gan, same])
    assert frame.loc[0, "gan_flag_rate"] == pytest.approx(0.1)
    assert {"gan_flag_rate_low", "difference_high"} <= set(frame.columns)


def test_json_ready_makes_strict_json():
    payload = json_ready({"a": np.float64("nan"), "b": np.int64(3), "c": (1.5, np.bool_(True)),
                          "d": proportion_ci(np.ones(4)), 1: [float("nan"), np.zeros(2)]})
    loaded = json.loads(json.dumps(payload, allow_nan=False))  # strict JSON: no NaN left
    assert loaded["a"] is None and loaded["b"] == 3 and loaded["c"] == [1.5, True]
    assert loaded["1"] == [None, [0.0, 0.0]] and loaded["d"]["high"] == 1.0 and loaded["d"]["n"] == 4


def test_detector_paths_skip_the_gan(project_dirs):
    _, results = project_dirs
    folder = results / "demo" / "models"
    folder.mkdir(parents=True)
    for name in ("fast.pt", "gan.pt", "dcgan.pt", "seed_cnn.pt", "fast.last.pt", "fast_history.csv"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in detector_paths("demo")] == ["fast.pt", "seed_cnn.pt"]
    assert detector_paths("nothing-here") == []


def test_write_csv_is_atomic_and_readable(tmp_path):
    frame = pd.DataFrame({"model": ["a"], "accuracy": [0.9]})
    path = write_csv(frame, tmp_path / "x" / "t.csv")
    assert pd.read_csv(path).equals(frame)
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]


# --------------------------------------------------------------------------- the pipeline

@pytest.fixture
def detector(tmp_path):
    """A small untrained `fast` net as a Detector (no training)."""
    import torch

    from helpers.core.models import build_model

    torch.manual_seed(0)
    model = build_model("fast", 32, width=8).eval()
    return Detector(model, "fast", "demo", 32, [0.5] * 3, [0.25] * 3, {"epochs": 1},
                    {"val_acc": 0.9, "val_loss": 0.3}, "abc", run_seconds=12.5, path=tmp_path / "fast.pt")


def test_pipeline_writes_metrics_robustness_and_cross_generator(detector, project_dirs):
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 12)
    files = np.array([f"test/{'REAL' if y == 0 else 'FAKE'}/{i:03d}.png" for i, y in enumerate(labels)])
    result = evaluate_detector(detector, images, labels, files, batch_size=8, n_bootstrap=200)
    m = result.metrics
    assert m["n_test"] == 24 and m["params"] > 0 and m["train_seconds"] == 12.5
    assert m["inference_images_per_s"] > 0 and m["ci_low"] <= m["accuracy"] <= m["ci_high"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, result.p_fake >= result.threshold))

    sets = perturbed_sets(images)
    table = robustness_table(detector, sets, labels, batch_size=8, clean_p_fake=result.p_fake)
    assert list(table["condition"]) == ["clean"] + [p.name for p in perturbations()]
    assert table.loc[0, "accuracy"] == pytest.approx(m["accuracy"]) and table.loc[0, "accuracy_drop"] == 0

    gan_images = rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    cross = cross_generator(result, gan_images, 64, n_bootstrap=200)
    assert cross["n_gan"] == 10 and cross["resized"] and cross["gan_resolution"] == 64
    assert isinstance(describe_cross_generator(cross), str)

    cache = SimpleNamespace(meta={"is_demo": True}, fingerprint="abc")
    csv_path, json_path = write_performance("demo", [result], cache, {"SEED": 0, "THRESHOLD": 0.7},
                                            {"cross_generator": [cross]})
    frame = pd.read_csv(csv_path)
    declared = columns.csv_names()  # every column a reader sees is computed, the declared first
    assert list(frame.columns[:len(declared) + 2]) == declared[:1] + ["dataset", "is_demo"] + declared[1:]
    payload = json.loads(json_path.read_text())
    assert payload["is_demo"] is True and payload["data_fingerprint"] == "abc"
    assert payload["threshold_override"] == 0.7  # notebook 05's THRESHOLD parameter, when given
    assert payload["environment"]["packages"]["scikit-learn"]
    assert payload["models"][0]["classification_report"]["FAKE"]["support"] == 12
    assert payload["cross_generator"][0]["gan_flag_rate"]["n"] == 10
    assert csv_path.parent == project_dirs[1] / "demo"
    assert "DEMO" in summary([result], result, table, [cross], True)
    colour = colour_check(result, 1 - labels * 0.9, n_bootstrap=200)  # colour wrong everywhere
    assert "on the 24 images whose colours mislead it" in summary([result], result, None, [], colour=colour)
    near = near_duplicate_check(result, np.arange(24) < 4, n_bootstrap=200)
    assert "Without the 4 images of the test split that have a near-duplicate" in summary(
        [result], result, None, [], near=near)


def test_counts_in_findings_read_as_english():
    from helpers.evaluation.text import images

    assert images(1) == "1 image" and images(19622) == "19,622 images" and images(0) == "0 images"


def test_fingerprint_mismatch_is_refused(detector):
    from types import SimpleNamespace

    same = SimpleNamespace(images=np.zeros((1, 32, 32, 3), np.uint8), fingerprint="abc")
    other = SimpleNamespace(images=np.zeros((1, 32, 32, 3), np.uint8), fingerprint="xyz")
    bigger = SimpleNamespace(images=np.zeros((1, 64, 64, 3), np.uint8), fingerprint="abc")
    assert fingerprint_problem(detector, same) is None
    assert "other data" in fingerprint_problem(detector, other)
    assert "IMAGE_SIZE=32" in fingerprint_problem(detector, bigger)
    usable, skipped = match_caches([detector], other, lambda size: pytest.fail("not needed"))
    assert usable == [] and skipped[0][0] == "fast"
    usable, skipped = match_caches([detector], bigger, lambda size: same)
    assert usable == [(detector, same)] and skipped == []


def test_stratified_subset_keeps_class_shares_and_seed():
    labels = np.array([0] * 300 + [1] * 100)
    sub = stratified_subset(labels, 40, seed=1)
    assert len(sub) == 40 and (labels[sub] == 1).sum() == 10
    assert np.array_equal(sub, stratified_subset(labels, 40, seed=1)) and np.all(np.diff(sub) > 0)
    assert np.array_equal(stratified_subset(labels, None), np.arange(400))
    assert np.array_equal(stratified_subset(labels, 1000), np.arange(400))


# --------------------------------------------------------------------------- colour alone

def test_colour_histograms_equal_numpy_histograms():
    from helpers.explore.stats import colour_histograms

    images = np.random.default_rng(0).integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    features = colour_histograms(images, bins=16, chunk=2)  # several chunks
    for i, c in itertools.product(range(5), range(3)):
        expected, _ = np.histogram(images[i, :, :, c], bins=16, range=(0, 256))
        np.testing.assert_allclose(features[i, 16 * c:16 * (c + 1)], expected / 63, rtol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        colour_histograms(images, bins=12)


def test_colour_baseline_sees_colour_and_nothing_else():
    from types import SimpleNamespace

    from helpers.explore.stats import colour_baseline, colour_histograms

    rng = np.random.default_rng(0)
    dark = rng.integers(0, 120, (40, 8, 8, 3), dtype=np.uint8)  # REAL: dark
    bright = rng.integers(100, 256, (40, 8, 8, 3), dtype=np.uint8)  # FAKE: bright
    images, labels = np.concatenate([dark, bright]), np.array([0] * 40 + [1] * 40)
    cache = SimpleNamespace(part=lambda name: (images, labels))
    model = colour_baseline(cache)
    test = np.concatenate([rng.integers(0, 120, (10, 8, 8, 3)), rng.integers(100, 256, (10, 8, 8, 3))])
    assert (model.predict(colour_histograms(test.astype(np.uint8))) == [0] * 10 + [1] * 10).all()
    # the same pixels in another arrangement look the same to it: it cannot see texture or shape
    shuffled = rng.permuted(images.reshape(80, 64, 3), axis=1).reshape(images.shape)
    np.testing.assert_array_equal(model.predict_proba(colour_histograms(images)),
                                  model.predict_proba(colour_histograms(shuffled)))


def test_colour_check_splits_the_test_set_where_colour_misleads(predictions):
    from types import SimpleNamespace

    y, p = predictions  # detector wrong on images 5, 6 and 14
    colour_p = np.where(np.arange(16) < 8, 0.2, 0.8)
    colour_p[[0, 5, 9, 14]] = 1 - colour_p[[0, 5, 9, 14]]  # colour wrong on 0, 5, 9 and 14
    result = SimpleNamespace(name="fast", y_true=y, p_fake=p, threshold=0.5)
    table = colour_check(result, colour_p, n_bootstrap=200).set_index(["classifier", "images"])
    assert table.loc[("colour-only baseline", "all test images"), "accuracy"] == 12 / 16
    assert table.loc[("fast", "all test images"), "accuracy"] == 13 / 16
    assert table.loc[("fast", "colour-only wrong"), "n_images"] == 4
    assert table.loc[("fast", "colour-only wrong"), "accuracy"] == 2 / 4  # right on 0 and 9
    assert table.loc[("fast", "colour-only right"), "accuracy"] == 11 / 12
    text = describe_colour_check(table.reset_index())
    assert "75.0%" in text and "On the 4 images" in text and "50.0%" in text and "chance" in text
    all_right = colour_check(result, (y == 1) * 0.9 + 0.05, n_bootstrap=200)
    assert np.isnan(all_right["accuracy"].iloc[3]) and "cannot show" in describe_colour_check(all_right)


def test_near_duplicate_check_scores_the_test_images_without_copies_in_train(predictions):
    from types import SimpleNamespace

    y, p = predictions  # detector wrong on images 5, 6 and 14
    near = np.zeros(16, dtype=bool)
    near[[1, 5, 9]] = True  # three test images with a near-duplicate in train, one of them missed
    result = SimpleNamespace(name="fast", y_true=y, p_fake=p, threshold=0.5)
    table = near_duplicate_check(result, near, n_bootstrap=200).set_index("images")
    assert table.loc["all test images", "accuracy"] == 13 / 16
    assert table.loc["near-duplicate in train", ["n_images", "accuracy"]].tolist() == [3, 2 / 3]
    assert table.loc["no near-duplicate in train", ["n_images", "accuracy"]].tolist() == [13, 11 / 13]
    text = describe_near_duplicate_check(table.reset_index())
    assert text.startswith("3 of the 16 images in the test split") and "84.6%" in text and "81.2%" in text
    none = near_duplicate_check(result, np.zeros(16, dtype=bool), n_bootstrap=200)
    assert "No test image has a near-duplicate" in describe_near_duplicate_check(none)


@pytest.mark.parametrize("right_where_misled, finding", [
    (60, "about as accurate there as elsewhere"), (42, "errs more there than elsewhere")])
def test_describe_colour_check_follows_the_numbers(right_where_misled, finding):
    from types import SimpleNamespace

    y = np.array([0, 1] * 50)
    colour_p = np.where(np.arange(100) < 60, 1 - y, y) * 0.8 + 0.1  # misleads on the first 60
    p = y * 0.8 + 0.1
    p[right_where_misled:60] = 1 - p[right_where_misled:60]  # detector wrong on some of them
    table = colour_check(SimpleNamespace(name="m", y_true=y, p_fake=p, threshold=0.5), colour_p, n_bootstrap=500)
    assert finding in describe_colour_check(table)


def test_a_detector_that_outputs_nan_fails_the_evaluation(detector):
    """Notebook 05 scores through evaluate_detector: a NaN model (one BatchNorm variance NaN,
    as an overflowing float16 run leaves it) stops the evaluation with the reason, never
    scoring it as a detector that calls everything REAL."""
    import torch

    from helpers.evaluation.compare import BrokenDetectorError, evaluate_detector

    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels, files = np.array([0, 1] * 4), [f"{i}.png" for i in range(8)]
    assert len(evaluate_detector(detector, images, labels, files, n_bootstrap=10).p_fake) == 8
    with torch.no_grad():
        bn = next(m for m in detector.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var[0] = float("nan")
    with pytest.raises(BrokenDetectorError, match=r"fast \(.*fast\.pt\): 8 of 8 test images get a NaN"):
        evaluate_detector(detector, images, labels, files, n_bootstrap=10)
