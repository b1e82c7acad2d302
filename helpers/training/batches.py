"""The device-side loader: each epoch's random choices from ``(seed, epoch)``, and augmented
batches gathered from the uint8 images already on the device (airbench's recipe).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from ..core.accel import to_float
from .config import TrainConfig
from .degrade import degrade, degrade_seed, recipe


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's generator: derived from (seed, epoch), no hidden state."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochPlan(NamedTuple):
    """The random choices of one epoch, one row per training image (see :func:`epoch_plan`)."""

    order: torch.Tensor  # (n,) the images' order
    flips: torch.Tensor  # (n,) bool: mirror left-right
    shifts: torch.Tensor  # (n, 2) (dy, dx) translation in pixels
    centres: torch.Tensor  # (n, 2) Cutout square centre as fractions of (height, width)


def epoch_plan(n: int, config: TrainConfig, epoch: int, rank: int = 0, world: int = 1) -> EpochPlan:
    """This process's shard of the random choices of one epoch: order, mirror flags, shifts
    and Cutout centres, drawn in that order from a generator seeded with ``(seed, epoch)``.

    Every process draws the same full plan and keeps every ``world``-th entry, so the
    processes of a distributed run together see each image once per epoch.
    """
    gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    order = torch.randperm(n, generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if config.flip else torch.zeros(n, dtype=torch.bool)
    t = config.translate
    shifts = torch.randint(-t, t + 1, (n, 2), generator=gen) if t else torch.zeros(n, 2, dtype=torch.long)
    centres = torch.rand(n, 2, generator=gen) if config.cutout else torch.zeros(n, 2)
    keep = slice(rank, n - n % world, world)
    return EpochPlan(order[keep], flips[keep], shifts[keep], centres[keep])


def cut_out(images: torch.Tensor, centres: torch.Tensor, side: int, fill: int = 128) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a ``side`` x ``side`` square of each uint8 image
    (B, 3, H, W) set to mid-grey, centred at ``centres`` (fractions of height and width) and
    clipped at the borders. The other pixels are untouched, never resampled, so whatever
    traces of generation they carry survive; the model has to find them all over the image
    instead of in one telling region."""
    _, _, h, w = images.shape
    centres = centres.to(images.device)

    def inside(size: int, centre: torch.Tensor) -> torch.Tensor:  # (B, size): within the square
        offset = torch.arange(size, device=images.device)[None] - (centre * size).long()[:, None]
        return (offset >= -(side // 2)) & (offset < side - side // 2)

    rows, cols = inside(h, centres[:, 0]), inside(w, centres[:, 1])
    square = rows[:, None, :, None] & cols[:, None, None, :]  # (B, 1, H, W)
    return images.masked_fill(square, fill).contiguous(memory_format=torch.channels_last)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(images: torch.Tensor, index: torch.Tensor, flips: torch.Tensor,
            shifts: torch.Tensor) -> torch.Tensor:
    """Gather ``images[index]`` mirrored and shifted, in one indexing operation on the device.

    ``images`` is (N, 3, H, W) uint8; shifts reflect the image at its borders. Pixels are
    only moved, never interpolated. Returns (B, 3, H, W) uint8 in channels_last memory.
    """
    n, _, h, w = images.shape
    device = images.device
    index, flips, shifts = index.to(device), flips.to(device), shifts.to(device)
    rows = _reflect(torch.arange(h, device=device)[None] + shifts[:, :1], h)  # (B, H)
    cols = _reflect(torch.arange(w, device=device)[None] + shifts[:, 1:], w)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # one flat pixel index per output pixel, then whole (3-byte) pixels copied as rows: 3x
    # faster on the CPU than broadcasting four index tensors over every channel
    pixel = (index[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]  # (B, H, W)
    pixels = images.permute(0, 2, 3, 1).reshape(n * h * w, 3)  # a view of channels_last storage
    out = pixels.index_select(0, pixel.flatten()).view(len(index), h, w, 3)
    return out.permute(0, 3, 1, 2)


class TrainingBatches:
    """Augmented training batches drawn on the device from uint8 images already there.

    ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) float32 live on the device for the whole
    run; each epoch yields ``steps`` batches ``(x, y)``: x (B, 3, H, W) float, normalised by
    ``mean``/``std`` (of pixels scaled to 0-1), in the run's memory format; y (B,) float32 0/1.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, config: TrainConfig, rank: int = 0, world: int = 1):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        self.config, self.rank, self.world = config, rank, world
        n = len(images)
        self.batch_size = max(1, min(config.batch_size // world, n // world))  # per process
        self.steps = max(1, (n // world) // self.batch_size)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the epoch's random choices go to the device in one copy, not a few small ones per step
        device = self.images.device
        plan = EpochPlan(*(part.to(device) for part in
                           epoch_plan(len(self.images), self.config, epoch, self.rank, self.world)))
        b = self.batch_size
        name = self.config.degrade
        if recipe(name):  # a CPU generator: the same draws on every device
            gen = torch.Generator().manual_seed(degrade_seed(self.config.seed, epoch, self.rank))
        for step in range(self.steps):
            part = slice(step * b, (step + 1) * b)
            index = plan.order[part]
            pixels = augment(self.images, index, plan.flips[part], plan.shifts[part])
            if recipe(name):  # real and fake alike, before Cutout's square (not a degradation)
                pixels = degrade(pixels, name, gen)
            if self.config.cutout:
                pixels = cut_out(pixels, plan.centres[part], self.config.cutout)
            x = to_float(pixels, self.mean, self.std).contiguous(memory_format=self.memory_format)
            yield x, self.labels[index]
