"""The detector architectures trained from scratch: ``seed_cnn``'s, the CIFAKE paper's, ``fast``
(airbench-style), ``npr`` (``fast`` on the neighbouring-pixel residual) and ``two_scale`` (two
``fast`` views summed). What each model is and its options are in :mod:`.models`, which
registers them; these are the classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .npr import RESIDUAL_GAIN, npr_residual


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


class NPRNet(FastNet):
    """:class:`FastNet` reading the neighbouring-pixel residual of its input (NPR, Tan et al.,
    CVPR 2024; :mod:`helpers.core.npr`) instead of the pixels: the same blocks, so a comparison
    with ``fast`` changes the input alone."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().features(npr_residual(x) * RESIDUAL_GAIN)


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
