"""NPR: the neighbouring-pixel residual as a detector's input (Tan et al., CVPR 2024).

Generators that upsample (transposed or nearest-neighbour convolutions, the decoders of GANs
and latent diffusion models) leave the pixels of each 2x2 cell correlated in a way a camera
does not. NPR exposes it: the image minus its copy downsampled 2x by nearest neighbour and
upsampled back, ``x - up(down(x))``, which is zero at the top-left pixel of every 2x2 cell
and the local differences elsewhere; a small network trained from scratch on that residual
generalised across GANs and diffusion models in the authors' benchmarks
(github.com/chuangchuangtan/NPR-DeepfakeDetection, ``resnet.py``: ``x - interpolate(
interpolate(x, 0.5, nearest), 2, nearest)``).

The model reading it is ``npr`` in :mod:`helpers.core.models` (``FastNet``'s blocks on the
residual). The trace lives in the pixel grid the generator produced: an image *resized* after generation
(CIFAKE's Stable Diffusion images shrunk to 32x32 by its authors, the shoes brought to 32 px by
the project's image rule) keeps little of it. ``docs/generalist-study.md`` measures what is left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the residual of normalised pixels spreads about half as wide as the image (std 0.44 against
#: 1.0 on 2,000 CIFAKE training images); scaled back to the range the first, batch-norm-free
#: convolution of ``FastNet`` was tuned for
RESIDUAL_GAIN = 2.0


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """``x - up(down(x))`` for (B, C, H, W) float ``x`` with even H and W: nearest-neighbour
    2x down- and upsampling, as NPR. Same shape and dtype; zero on a constant image.
    Raises ValueError for an odd side."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"NPR needs even image sides, got {tuple(x.shape[-2:])}")
    down = F.interpolate(x, scale_factor=0.5, mode="nearest")
    return x - F.interpolate(down, scale_factor=2.0, mode="nearest")
