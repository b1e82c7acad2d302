"""The ImageNet-pretrained EfficientNet-Lite0 detectors: offline weights, the frozen probe,
and the stratified CIs of the cross-generator matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from helpers.core import paths
from helpers.core.detector import Detector
from helpers.core.models import build_model, input_normalisation
from helpers.core.pretrained import LITE0_MEAN, LITE0_STD, Lite0Detector, lite0_imagenet, resize_for
from helpers.core.stats import _weighted_ranking, ranking_ci
from helpers.training.probe import fit_linear_head
from tests.conftest import train_tiny_detector

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def imagenet_lite0():
    return lite0_imagenet()


@pytest.mark.parametrize(("photo", "imagenet_class"), [("chelsea", 285), ("coffee", 967)])
def test_the_packaged_weights_load_offline_and_name_the_sample_photos(imagenet_lite0, photo, imagenet_class):
    # scikit-image's cat photo is an "Egyptian cat" (285), its coffee an "espresso" (967):
    # only the real ImageNet weights get both right with this confidence
    image = torch.from_numpy(getattr(skimage_data, photo)()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(image, size=224, mode="bilinear", antialias=True)
    x = (x - torch.tensor(LITE0_MEAN)[:, None, None]) / torch.tensor(LITE0_STD)[:, None, None]
    with torch.no_grad():
        p = imagenet_lite0(x).softmax(1)[0]
    assert p.argmax().item() == imagenet_class and p.max().item() > 0.7


def test_small_images_are_upscaled_by_repeating_pixels():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    up = resize_for(x, 64)
    assert up.shape == (2, 3, 64, 64)
    assert torch.equal(up[..., ::2, ::2], x) and torch.equal(up[..., 1::2, 1::2], x)
    assert resize_for(x, 32) is x
    assert resize_for(torch.rand(1, 3, 240, 240), 128).shape[-1] == 128
    assert Lite0Detector(32).input_size == 64 and Lite0Detector(240).input_size == 240


def test_the_detector_gives_one_logit_at_any_size_and_starts_from_imagenet(imagenet_lite0):
    model = build_model("lite0", 32).eval()
    for size in (32, 48):
        assert model(torch.rand(2, 3, size, size)).shape == (2, 1)
    reference = imagenet_lite0.state_dict()
    own = model.backbone.state_dict()
    assert torch.equal(own["_conv_stem.weight"], reference["_conv_stem.weight"])
    assert input_normalisation("lite0") == (LITE0_MEAN, LITE0_STD) and input_normalisation("fast") is None


def test_the_probe_backbone_is_frozen_and_keeps_imagenet_statistics():
    model = build_model("lite0_probe", 32)
    model.train()
    assert not model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_the_linear_head_is_the_fitted_logistic_regression():
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, (200, 6)).astype(np.float32)
    labels = (features[:, 0] + rng.normal(0, 1, 200) > 3).astype(np.int64)
    head = torch.nn.Linear(6, 1)
    rows = fit_linear_head(head, (features[:150], labels[:150]), (features[150:], labels[150:]),
                           strengths=(0.1, 1.0))
    assert len(rows) == 2 and sum(r["chosen"] for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"])
    scaler = StandardScaler().fit(features[:150])
    clf = LogisticRegression(C=chosen["C"], max_iter=2000, random_state=0).fit(
        scaler.transform(features[:150]), labels[:150])
    with torch.no_grad():
        logits = head(torch.from_numpy(features)).numpy().ravel()
    np.testing.assert_allclose(logits, clf.decision_function(scaler.transform(features)), atol=1e-4)


@pytest.fixture(scope="module")
def probe_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    tree = train_tiny_detector(root, "demo")
    tree["probe"] = train_tiny_detector(root, "demo", model="lite0_probe")["checkpoint"]
    return tree


def test_the_probe_trains_in_one_pass_and_round_trips_through_the_checkpoint(probe_tree):
    detector = Detector.load(probe_tree["probe"])
    assert detector.architecture == "lite0_probe" and detector.config["epochs"] == 1
    assert detector.mean == LITE0_MEAN and detector.threshold_chosen
    history = pd.read_csv(probe_tree["probe"].with_name("lite0_probe_history.csv"))
    assert len(history) == 1 and history["probe_C"].notna().all()
    images, _ = probe_tree["cache"].part("test")
    p = detector.predict_proba(images)
    assert p.shape == (len(images),) and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(Detector.load(probe_tree["probe"]).predict_proba(images), p)
    assert torch.equal(detector.model.backbone._conv_stem.weight, lite0_imagenet()._conv_stem.weight)


def test_pretrained_detectors_join_the_cross_dataset_matrix_with_cis(probe_tree, monkeypatch):
    from helpers.evaluation import cross_dataset

    monkeypatch.setattr(paths, "DATA", probe_tree["root"] / "data")
    monkeypatch.setattr(paths, "RESULTS", probe_tree["root"] / "results")
    detectors, _ = cross_dataset.dataset_detectors(["demo"])
    names = [d.name for d in detectors]
    # the best detector trained from scratch (the specialist), and every pretrained one
    assert names == ["demo/fast", "demo/lite0_probe"]
    own = cross_dataset.test_source("demo", max_images=16)
    table = cross_dataset.matrix(detectors, [own], n_bootstrap=50)
    assert len(table) == len(names) and table["pretrained"].tolist().count(True) == 1
    assert ((table["auc_low"] <= table["auc"]) & (table["auc"] <= table["auc_high"])).all()
    summary = cross_dataset.unseen_summary(table)
    assert len(summary) == len(names) and (summary["unseen_sources"] == 0).all()
    assert "never saw" in cross_dataset.describe_generalisation(summary)


def test_ranking_ci_brackets_scikit_learn_and_needs_both_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = labels + rng.normal(0, 1, 400)
    for metric, reference in (("auc", skm.roc_auc_score), ("average_precision", skm.average_precision_score)):
        ci = ranking_ci(labels, scores, metric, n_resamples=200)
        assert ci.estimate == pytest.approx(reference(labels, scores))
        assert ci.low < ci.estimate < ci.high and ci.high - ci.low < 0.15
    with pytest.raises(ValueError, match="both classes"):
        ranking_ci(np.ones(10), np.arange(10.0))
    with pytest.raises(ValueError, match="unknown ranking metric"):
        ranking_ci(labels, scores, "f1")


def test_the_vectorised_resample_metric_is_scikit_learns_with_sample_weights():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels + rng.normal(0, 1, 300), 1)  # ties, as saturated probabilities give
    weights = rng.integers(0, 4, 300).astype(float)
    values, group = np.unique(-scores, return_inverse=True)
    per_class = [np.bincount(group[labels == c], weights[labels == c], minlength=len(values))[None]
                 for c in (1, 0)]
    assert _weighted_ranking(*per_class, "auc")[0] == pytest.approx(
        skm.roc_auc_score(labels, scores, sample_weight=weights))
    assert _weighted_ranking(*per_class, "average_precision")[0] == pytest.approx(
        skm.average_precision_score(labels, scores, sample_weight=weights))


def test_the_backbone_probe_study_scores_each_probe_beside_the_specialist(probe_tree, monkeypatch, tmp_path):
    """benchmarks/probe_backbones.py on the tiny demo tree: the stage features extend the pooled
    ones, and every probe gets an AUC row on the same source as the from-scratch specialist."""
    import importlib.util
    import json

    from tests.conftest import ROOT, point_paths_at

    spec = importlib.util.spec_from_file_location("probe_backbones", ROOT / "benchmarks" / "probe_backbones.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    images, _ = probe_tree["cache"].part("test")
    size = images.shape[1]
    pooled, staged = study.Lite0Stages(size, False)(images[:4]), study.Lite0Stages(size, True)(images[:4])
    assert pooled.shape == (4, 1280) and staged.shape == (4, 2304)
    np.testing.assert_allclose(staged[:, :1280], pooled, atol=1e-5)

    point_paths_at(monkeypatch, probe_tree)
    threads = torch.get_num_threads()
    assert study.main(["--datasets", "demo", "--backbones", "lite0", "lite0_stages", "--n-train", "24",
                       "--n-val", "8", "--n-source", "16", "--out", str(tmp_path)]) == 0
    torch.set_num_threads(threads)
    table = pd.read_csv(tmp_path / "auc.csv")
    assert table["probe"].tolist() == ["from scratch", "lite0", "lite0_stages"]
    assert (table["source"] == "demo test").all() and table["seen"].all()
    assert ((table["auc_low"] <= table["auc"]) & (table["auc"] <= table["auc_high"])).all()
    costs = json.loads((tmp_path / "summary.json").read_text())["costs"]
    assert [c["features"] for c in costs] == [1280, 2304]
