"""Every detector model: output shape at 32 px and at the shoes resolution, CAM layers, weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.core import models

NAMES = sorted(models.MODELS)


def _map_shape(model, layer, size):
    """(H, W) of ``layer``'s output for one ``size`` x ``size`` input."""
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    handle.remove()
    return tuple(seen["shape"][-2:])


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
    assert min(_map_shape(model, models.cam_target_layer(model), 32)) >= 4


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


@pytest.mark.parametrize("name", NAMES)
def test_cam_target_layer_at_the_shoes_resolution(name):
    model = models.build_model(name, 128).eval()
    assert min(_map_shape(model, models.cam_target_layer(model), 128)) >= 4


def test_options_a_model_does_not_take_are_a_clear_error():
    with pytest.raises(TypeError, match="does not take"):
        models.build_model("seed_cnn", 32, width=8)
    assert models.count_parameters(models.build_model("fast", 32, width=16)) < \
        models.count_parameters(models.build_model("fast", 32, width=32))


def test_pretrained_weights_come_from_the_hub_cache_when_present(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(1)
    source = torchvision.models.resnet18()  # stands in for the ImageNet file
    path = models.pretrained_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = models.build_model("resnet18", 128, pretrained=True)
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert model.fc.weight.shape == (1, 512)  # the 1-logit head stays freshly initialised


def test_two_scale_sums_a_half_size_view_and_a_native_pixel_view():
    torch.manual_seed(0)
    model = models.build_model("two_scale", 240).eval()
    x = torch.randn(2, 3, 240, 240)
    with torch.no_grad():
        whole = model(x)
        parts = model.global_view(torch.nn.functional.avg_pool2d(x, 2)) + model.local_view(x)
    assert torch.allclose(whole, parts)
    with torch.no_grad():  # each view's share on its own, and the local one as a map
        global_share, local_share = model.view_logits(x)
        evidence = model.local_evidence(x)
    assert torch.allclose(global_share + local_share, whole)
    assert evidence.shape == (2, 15, 15)
    assert torch.allclose(evidence.mean(dim=(1, 2)), local_share.flatten(), atol=1e-5)
    # the local view is fully convolutional: it reads every native pixel, not a resized copy
    seen = {}
    handle = model.local_view.stem.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen["shape"][-2:] == (120, 120)


def test_fast_patch_stem_on_32px_runs_the_blocks_at_16px_from_every_pixel():
    torch.manual_seed(0)
    model = models.build_model("fast", 32, width=16, patch=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    assert _map_shape(model, model.stem, 32) == (16, 16)
    # the stem is a linear map of each 2x2 patch with at least as many outputs as inputs
    stem = model.stem[0]
    assert stem.kernel_size == stem.stride == (2, 2) and stem.out_channels >= 3 * 2 * 2
    assert min(_map_shape(model, models.cam_target_layer(model), 32)) >= 4
    assert models.build_model("fast", 32).patch == 1  # without the option: full resolution


def test_cifake_paper_is_the_papers_function():
    """Pooling before the first ReLU and skipping the identity pool change nothing: same
    logits and gradients as conv -> ReLU -> pool (the paper's order), same parameter names."""
    torch.manual_seed(0)
    model = models.build_model("cifake_paper", 32)
    b1, b2, head = model.block1[0], model.block2[1], model.head

    def papers_order(x):
        x = F.max_pool2d(F.relu(b1(x)), 2)
        x = F.max_pool2d(F.relu(b2(x)), 2)
        x = F.adaptive_avg_pool2d(x, 6).flatten(1)
        return head[5](F.relu(head[3](x)))

    for size in (32, 48):  # 48 px: the average pool does work
        x = torch.randn(4, 3, size, size)
        ours = model(x)
        ours.sum().backward()
        ours_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        reference = papers_order(x)
        reference.sum().backward()
        assert torch.equal(ours, reference)
        assert all(torch.equal(a, p.grad) for a, p in zip(ours_grads, model.parameters()))
        model.zero_grad()
    assert sorted(model.state_dict()) == sorted(
        ["block1.0.weight", "block1.0.bias", "block2.1.weight", "block2.1.bias",
         "head.3.weight", "head.3.bias", "head.5.weight", "head.5.bias"])


def test_the_registry_checks_options_and_the_grad_cam_contract_when_a_model_is_built():
    with pytest.raises(TypeError, match=r"does not take the options \['widht'\].*takes \['patch', 'width'\]"):
        models.build_model("fast", 32, widht=8)
    with pytest.raises(TypeError, match="width=8.0 is not int"):
        models.build_model("fast", 32, width=8.0)
    assert models.MODELS["lite0_probe"].frozen and models.MODELS["lite0"].pretrained
    assert not models.MODELS["fast"].pretrained and models.input_normalisation("fast") is None
    assert set(models.PRETRAINED_NORMALISATION) == {"lite0", "lite0_probe"}


def test_adding_a_model_is_one_decorated_function(monkeypatch):
    """Issue #33: adding an architecture took 8-10 hand-edited files. Now: its class and
    ``@register`` in core/models.py; a measured setting in training/config.py and its study in
    docs/ when it has one. The CLI, the option checks and the Grad-CAM contract follow."""
    from helpers.training import __main__ as cli
    from helpers.training.config import default_config

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))

    class Tiny(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1)
            self.cam_candidates = [self.conv]

        def forward(self, x):
            return self.conv(x).mean((1, 2, 3))[:, None]

    models.register("tiny", options={"width": int})(lambda image_size, width=None: Tiny(width or 4))
    net = models.build_model("tiny", 16, width=3)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 1)
    assert "tiny" in cli._parser().format_help()  # the command line lists it
    assert default_config("demo", model="tiny", width=3, device="cpu").model_options == {"width": 3}

    class Blind(nn.Module):  # forgot its Grad-CAM layers: refused when built, not in notebook 06
        def forward(self, x):
            return x.mean((1, 2, 3))[:, None]

    models.register("blind")(lambda image_size: Blind())
    with pytest.raises(ValueError, match="lists no Grad-CAM layers"):
        models.build_model("blind", 16)
    with pytest.raises(ValueError, match="registered twice"):
        models.register("tiny")(lambda image_size: Tiny(4))


def test_every_model_option_is_settable_from_the_configuration_and_the_command_line(monkeypatch):
    """Issue #33: `two_scale`'s `local_width` was declared by its @register but no TrainConfig
    field, so no run could set it. TrainConfig's option fields now come from the registry."""
    from dataclasses import asdict, fields

    from helpers.training import __main__ as cli
    from helpers.training.config import TrainConfig, config_class, default_config

    assert models.option_types()["local_width"] is int and models.option_types()["pretrained"] is bool
    assert set(models.option_types()) <= {f.name for f in fields(TrainConfig)}  # nothing listed by hand
    config = cli.config_of(cli._parser().parse_args(["--dataset", "sneakers", "--local-width", "8"]))
    assert config.model == "two_scale" and config.model_options == {"width": 32, "local_width": 8}
    net = models.build_model(config.model, 64, **config.build_options)
    assert net.local_view.block1[0].out_channels == 8 and net.global_view.block1[0].out_channels == 32
    assert default_config("sneakers", device="cpu").local_width is None  # unset: the model's 16
    with pytest.raises(TypeError, match="does not take the options"):  # refused, never dropped
        models.build_model("seed_cnn", 32, **default_config("demo", model="seed_cnn", width=8).build_options)
    # `pretrained` chooses the starting weights: passed to build_model, not saved to rebuild it
    resnet = default_config("cifake", model="resnet18", pretrained=True)
    assert resnet.build_options == {"pretrained": True} and resnet.model_options == {}
    # a checkpoint saved before `local_width` existed still loads, the field at its default
    old = {k: v for k, v in asdict(config).items() if k != "local_width"}
    assert TrainConfig.from_dict(old) == replace(config, local_width=None)
    # a future option: declared once, it becomes a field, with the registry's help
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    models.register("deep", options={"depth": int}, help={"depth": "blocks"})(lambda image_size, depth=None: None)
    future = config_class(models.option_types())
    assert future(depth=3).depth == 3 and future().depth is None
    assert [f.metadata["help"] for f in fields(future) if f.name == "depth"] == ["deep: blocks"]
    models.register("other", options={"depth": float})(lambda image_size, depth=None: None)
    with pytest.raises(TypeError, match="'depth' is int for one model and float"):
        models.option_types()
