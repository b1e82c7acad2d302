"""Differentiable augmentation for GANs trained on few images (DiffAugment).

Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020; the three transforms follow the authors' reference code
(``mit-han-lab/data-efficient-gans``, ``DiffAugment_pytorch.py``) for images in [-1, 1].

The discriminator sees *every* image through the same random transform family, real and
generated alike, and the generator's loss goes through it too (the transforms are
differentiable in the pixels): the discriminator cannot memorise the few real images, and the
generator is not taught to produce augmented-looking ones. Parameters are drawn per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _draw_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where a transform's random numbers are drawn: on ``generator``'s device, else on ``x``'s
    (its global stream), so a GPU batch's parameters never cross from the host: the CPU-drawn
    parameters of old cost 7 blocking copies per call, 3 calls per GAN step."""
    return generator.device if generator is not None else x.device


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n, 1, 1, 1) uniform [0, 1) numbers on ``x``'s device and dtype.

    Drawn in float32 and then cast, as before the draws moved to the device: on a CPU the
    stream and the values are bit for bit the same.
    """
    draw = torch.rand(n, 1, 1, 1, generator=generator, device=_draw_device(x, generator))
    return draw.to(x.device, x.dtype)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0-2) and contrast (x0.5-1.5) per image."""
    n = x.shape[0]
    x = x + (_rand(n, x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, x, generator) + 0.5) + mean


def _randint(low: int, high: int, n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(low, high, (n, 1, 1), generator=generator,
                         device=_draw_device(x, generator)).to(x.device)


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros (mid-grey)."""
    n, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx, ty = _randint(-sx, sx + 1, n, x, generator), _randint(-sy, sy + 1, n, x, generator)
    b, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                               torch.arange(w, device=x.device), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # the one-pixel zero border is what shifted-in pixels read
    return padded.permute(0, 2, 3, 1)[b, gx, gy].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a square of ``ratio`` times the image side at a random place in each image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = _randint(0, h + (1 - ch % 2), n, x, generator) - ch // 2  # top row, may lie outside
    oy = _randint(0, w + (1 - cw % 2), n, x, generator) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= ox) & (rows < ox + ch) & (cols >= oy) & (cols < oy + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


_TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> the transform names, checked; ``""`` -> none."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in _TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown DiffAugment transform(s) {unknown}; choose from {POLICIES}")
    return names


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the ``policy``'s transforms, in order, to a (N, 3, H, W) float batch in [-1, 1].

    Differentiable in ``x``; random parameters come from ``generator`` (then drawn on its
    device and copied to ``x``'s if they differ) or, when None, from the global stream of
    ``x``'s device (no host-device copy, no synchronisation on a GPU), so two calls with
    generators in the same state transform alike. On a CPU the numbers are those the CPU
    stream always gave. Raises ``ValueError`` for an unknown transform name.
    """
    for name in parse_policy(policy):
        x = _TRANSFORMS[name](x, generator=generator)
    return x.contiguous()
