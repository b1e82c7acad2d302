"""Every detector model: output shape at 32 px and at the shoes resolution, CAM layers, weights."""

from __future__ import annotations

import pytest
import torch

from helpers import models

NAMES = sorted(models.MODELS)


def test_the_four_required_models_are_registered():
    assert {"seed_cnn", "cifake_paper", "resnet18", "fast"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [32, 128])
def test_one_logit_per_image_at_any_size(name, size):
    torch.manual_seed(0)
    model = models.build_model(name, size).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_cam_target_layer_keeps_a_spatial_map_at_32px(name):
    model = models.build_model(name, 32).eval()
    layer = models.cam_target_layer(model)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))  # returns None
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert seen["shape"][-1] >= 4 and seen["shape"][-2] >= 4


def test_resnet18_has_a_cifar_stem_for_small_inputs():
    small, large = models.build_model("resnet18", 32), models.build_model("resnet18", 224)
    assert small.conv1.stride == (1, 1) and small.conv1.kernel_size == (3, 3)
    assert large.conv1.stride == (2, 2)


def test_unknown_model_lists_the_choices():
    with pytest.raises((KeyError, ValueError), match="fast"):
        models.build_model("vgg99", 32)


def test_pretrained_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        models.build_model("resnet18", 32, pretrained=True)


def test_count_parameters_counts_trainable_weights():
    model = models.build_model("cifake_paper", 32)
    assert models.count_parameters(model) == sum(p.numel() for p in model.parameters())
