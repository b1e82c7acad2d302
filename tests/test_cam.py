"""Grad-CAM through pytorch-grad-cam: shapes for every model, one map per image, a known region
found, and faithfulness numbers that come from the library's metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from helpers.core import models
from helpers.core.detector import Detector
from helpers.explain.cams import (
    METHODS,
    OUTCOMES,
    RANDOM,
    cam_map_size,
    class_average_maps,
    compute_cams,
    has_two_views,
    local_evidence_maps,
    outcomes,
    pick_examples,
    random_maps,
    region_shares,
    stratified_sample,
    to_input,
    view_logits,
    view_table,
)
from helpers.explain.faithfulness import faithfulness_scores, faithfulness_table
from helpers.explain.figures import local_evidence_figures, overlay
from helpers.explain.text import describe_faithfulness, describe_views

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
# The library's ROAD converts torch tensors with np.float32(...): NumPy 2 warns, harmlessly.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread per test process: tests run two at a time on two cores, and two
    OpenMP threads per process on a busy machine are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def as_detector(model: torch.nn.Module) -> Detector:
    """``model`` with the normalisation these tests use, as the explanation functions take it."""
    return Detector(model, "fast", "demo", 32, MEAN, STD, {}, {}, "none")


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


# --------------------------------------------------------------------------- every model

@pytest.mark.parametrize("name,size", [(n, 32) for n in models.MODELS] + [("fast", 64)])
def test_cam_has_input_size_and_one_map_per_image(name, size):
    torch.manual_seed(0)
    model = models.build_model(name, size)
    images = random_images(4, size)
    classes = [0, 1, 0, 1]
    h, w = cam_map_size(model, size)
    assert min(h, w) >= 4 or size > 32, "target layer must keep a spatial map"
    for method in METHODS:
        maps = compute_cams(model, images, classes, MEAN, STD, method)
        assert maps.shape == (4, size, size) and maps.dtype == np.float32
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # A batch gives the same maps as images one by one: each image had its own target.
    batch = compute_cams(model, images, classes, MEAN, STD, "Grad-CAM")
    single = np.stack([compute_cams(model, images[i:i + 1], [c], MEAN, STD, "Grad-CAM")[0]
                       for i, c in enumerate(classes)])
    np.testing.assert_allclose(batch, single, atol=1e-4)
    # N images -> N different maps. EigenCAM here: an untrained model may have no positive
    # evidence for one class at all, and Grad-CAM's ReLU then gives all-zero maps (the
    # trained model below checks Grad-CAM's maps).
    eigen = compute_cams(model, images, classes, MEAN, STD, "EigenCAM")
    assert all(not np.allclose(eigen[i], eigen[j]) for i in range(4) for j in range(i + 1, 4))


def test_same_maps_as_the_library_used_plainly():
    """Freezing the weights below the target layer (a speed-up) changes no map."""
    from pytorch_grad_cam import GradCAMPlusPlus

    torch.manual_seed(0)
    model = models.build_model("seed_cnn", 32).eval()
    images, classes = random_images(5, 32), [1, 0, 1, 1, 0]
    with GradCAMPlusPlus(model=model, target_layers=[models.cam_target_layer(model)]) as plain:
        expected = plain(input_tensor=to_input(images, MEAN, STD),
                         targets=[BinaryClassifierOutputTarget(c) for c in classes])
    ours = compute_cams(model, images, classes, MEAN, STD, "Grad-CAM++")
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_target_layer_keeps_a_4x4_map_at_32px():
    for name in models.MODELS:
        h, w = cam_map_size(models.build_model(name, 32), 32)
        assert min(h, w) >= 4, name


def test_one_class_per_image_is_required():
    model = models.build_model("cifake_paper", 32)
    with pytest.raises(ValueError, match="one class per image"):
        compute_cams(model, random_images(3, 32), [1], MEAN, STD)
    with pytest.raises(ValueError, match="0 \\(REAL\\) or 1"):
        compute_cams(model, random_images(2, 32), [1, 2], MEAN, STD)
    with pytest.raises(KeyError, match="unknown CAM method"):
        compute_cams(model, random_images(1, 32), [1], MEAN, STD, "NoCAM")


def test_frozen_weights_still_give_maps():
    """Inference may freeze the weights; the CAM still gets gradients through the input."""
    torch.manual_seed(0)
    model = models.build_model("seed_cnn", 32).requires_grad_(False)
    maps = compute_cams(model, random_images(2, 32), [1, 0], MEAN, STD)
    assert maps.shape == (2, 32, 32) and maps.max() > 0


@pytest.mark.parametrize("gradients_off", [torch.no_grad, torch.inference_mode])
def test_a_call_with_gradients_off_gives_the_same_maps(gradients_off):
    """From inside an inference loop (no_grad, inference_mode) the CAM turns gradients on for
    itself: the same maps as a plain call, for every method, and gradients off again after."""
    torch.manual_seed(0)
    model = models.build_model("seed_cnn", 32).eval()
    images, classes = random_images(4, 32, seed=3), [1, 0, 1, 0]
    for method in METHODS:
        plain = compute_cams(model, images, classes, MEAN, STD, method)
        assert plain.max() > 0, method  # maps with content, so equality means something
        with gradients_off():
            maps = compute_cams(model, images, classes, MEAN, STD, method)
            assert not torch.is_grad_enabled()
        np.testing.assert_allclose(maps, plain, atol=1e-6, err_msg=method)


def test_a_model_made_in_inference_mode_gets_one_sentence():
    with torch.inference_mode():
        model = models.build_model("seed_cnn", 32).eval()
    with pytest.raises(RuntimeError, match=r"^Grad-CAM needs gradients.*inference_mode\(\): load "
                                           r"or build the model outside it"):
        compute_cams(model, random_images(1, 32), [1], MEAN, STD)


# --------------------------------------------------------------------------- a known region

PATCH = 8  # FAKE images carry a bright noisy PATCH x PATCH square in the top-left corner


def corner_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(40, 180, (n, 1, 1, 3)) + rng.normal(0, 20, (n, 32, 32, 3))
    images[labels == 1, :PATCH, :PATCH] = rng.uniform(200, 255, ((labels == 1).sum(), PATCH, PATCH, 3))
    return images.clip(0, 255).astype(np.uint8), labels


class TinyNet(nn.Module):
    """Three conv stages down to an 8x8 map, global average pooling, one logit."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def corner_model():
    torch.manual_seed(0)
    images, labels = corner_images(512, seed=0)
    inputs = to_input(images, MEAN, STD)
    targets = torch.tensor(labels, dtype=torch.float32)[:, None]
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(images), (64,), generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(inputs[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_images, test_labels = corner_images(48, seed=1)
    with torch.no_grad():
        p_fake = torch.sigmoid(model(to_input(test_images, MEAN, STD))).numpy().ravel()
    assert ((p_fake >= 0.5) == test_labels).mean() == 1.0, "the tiny model must learn the patch"
    return model, test_images, test_labels


@pytest.mark.parametrize("method", ["Grad-CAM", "Grad-CAM++"])
def test_cam_peaks_where_the_evidence_is(corner_model, method):
    model, images, labels = corner_model
    fake = labels == 1
    maps = compute_cams(model, images[fake], labels[fake], MEAN, STD, method,
                            target_layer=model.features[-1])
    assert all(not np.allclose(maps[i], maps[j]) for i in range(8) for j in range(i + 1, 8))
    rows, cols = np.unravel_index(maps.reshape(len(maps), -1).argmax(axis=1), (32, 32))
    assert ((rows < 16) & (cols < 16)).mean() >= 0.9  # peak in the top-left quadrant
    patch_share = maps[:, :PATCH, :PATCH].sum() / maps.sum()
    assert patch_share > 3 * (PATCH * PATCH) / (32 * 32)  # far above a uniform map's share
    average = class_average_maps(maps, labels[fake])["FAKE"]
    assert region_shares(average)["peak"] == "top-left"


def test_faithfulness_separates_a_true_map_from_random(corner_model):
    model, images, labels = corner_model
    layer = model.features[-1]
    maps = {"Grad-CAM": compute_cams(model, images, labels, MEAN, STD, target_layer=layer)}
    map_size = cam_map_size(model, 32, layer)
    maps[RANDOM] = random_maps(len(images), 32, map_size, seed=1)
    maps["another random"] = random_maps(len(images), 32, map_size, seed=2)
    scores = faithfulness_scores(as_detector(model), images, labels, maps, percentiles=(50, 80))
    assert len(scores) == 3 * len(images)
    table = faithfulness_table(scores).set_index(["method", "metric"])
    assert table.loc[("Grad-CAM", "ROAD combined"), "better_than_random"] == "better"
    assert table.loc[("Grad-CAM", "ROAD MoRF"), "better_than_random"] == "better"
    assert table.loc[("another random", "ROAD combined"), "better_than_random"] == "no better"
    assert table.loc[(RANDOM, "ROAD combined"), "better_than_random"] == "(baseline)"
    text = describe_faithfulness(table.reset_index())
    assert "Grad-CAM" in text and "better than random" in text and "another random" in text


def test_road_combined_is_the_library_formula(corner_model):
    model, images, labels = corner_model
    images, labels = images[:6], labels[:6]
    maps = compute_cams(model, images, labels, MEAN, STD, target_layer=model.features[-1])
    scores = faithfulness_scores(as_detector(model), images, labels, {"Grad-CAM": maps},
                                 percentiles=(30, 70), seed=3, tie_break=0.0)
    torch.manual_seed(3)
    expected = ROADCombined(percentiles=[30, 70])(
        to_input(images, MEAN, STD), maps, [BinaryClassifierOutputTarget(int(c)) for c in labels],
        model).reshape(-1)
    np.testing.assert_allclose(scores["ROAD combined"].to_numpy(), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- small pieces

def test_outcomes_and_examples():
    labels = np.array([1, 1, 0, 0, 1, 0])
    p_fake = np.array([0.9, 0.2, 0.1, 0.7, 0.5, 0.49])
    groups = outcomes(labels, p_fake)
    assert groups.tolist() == ["TP", "FN", "TN", "FP", "TP", "TN"]
    picked = pick_examples(groups, n_per_group=1, seed=0)
    assert set(picked) == set(OUTCOMES)
    assert all(len(v) == 1 and groups[v[0]] == k for k, v in picked.items())
    empty = pick_examples(np.array(["TP", "TP"]), n_per_group=3)
    assert len(empty["TP"]) == 2 and len(empty["FP"]) == 0
    sample = stratified_sample(np.array([0] * 10 + [1] * 10), 6, seed=0)
    assert len(sample) == 6 and (sample < 10).sum() == 3


def test_region_shares_and_random_maps():
    corner = np.zeros((32, 32), np.float32)
    corner[:4, :4] = 1
    shares = region_shares(corner)
    assert shares["peak"] == "top-left" and shares["border_share"] == 1.0 and shares["centre_share"] == 0
    assert region_shares(np.ones((32, 32)))["centre_share"] == pytest.approx(0.25)
    maps = random_maps(5, 32, (4, 4), seed=0)
    assert maps.shape == (5, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_array_equal(maps, random_maps(5, 32, (4, 4), seed=0))
    assert overlay(random_images(1, 32)[0], maps[0]).shape == (32, 32, 3)


def test_a_two_view_model_splits_its_logit_and_maps_its_local_evidence():
    torch.manual_seed(0)
    model = models.build_model("two_scale", 64).eval()
    detector = as_detector(model)
    images = random_images(5, 64)
    views = view_logits(detector, images, batch_size=2)
    with torch.no_grad():
        logits = model(to_input(images, MEAN, STD)).flatten().numpy()
    np.testing.assert_allclose(views["total"], logits, atol=1e-5)
    np.testing.assert_allclose(views["global"] + views["local"], views["total"], atol=1e-6)
    labels = np.array([1, 0, 1, 0, 1])
    table = view_table(views, labels)
    for column, row in [("global", "global view alone"), ("local", "local view alone"), ("total", "both views")]:
        wrong = int(((views[column] >= 0) != labels.astype(bool)).sum())
        assert table.loc[row, "errors"] == wrong and table.loc[row, "accuracy"] == pytest.approx(1 - wrong / 5)
    maps = local_evidence_maps(detector, images, batch_size=2)
    assert maps.shape == (5, 64, 64)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), views["local"], atol=1e-5)  # exact, upsampled
    text = describe_views(table)
    assert f"({table.loc['both views', 'errors']})" in text and "global view" in text
    groups = np.array(["TP", "TN", "TP", "FN", "TP"])
    figures = local_evidence_figures(detector, images, [f"{i}.png" for i in range(5)],
                                     np.full(5, 0.7), groups, n_per_group=2)
    assert set(figures) == {"TP", "TN", "FN"} and all(len(f.axes) == 1 for f in figures.values())
    single = models.build_model("fast", 32)
    assert not has_two_views(single) and has_two_views(model)
    with pytest.raises(TypeError, match="one view"):
        view_logits(as_detector(single), random_images(1, 32))
    with pytest.raises(ValueError, match="no images"):
        local_evidence_maps(detector, random_images(0, 64))
