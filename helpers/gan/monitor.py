"""What a GAN run leaves behind as it trains: sample grids (:func:`image_grid`, :func:`save_png`),
scores, the best-scored epoch and checkpoints (:class:`EpochMonitor`, the ``on_epoch`` of
:func:`helpers.gan.train.train_gan`), the history as a table, and the checkpoint file
(:func:`save_checkpoint`, :func:`load_checkpoint`). Split from :mod:`.train`, which trains.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.repro import atomic_path, environment_fingerprint
from .config import GANConfig
from .train import GAN, STAT_KEYS


def image_grid(images: np.ndarray, columns: int = 8, pad: int = 2, fill: int = 255) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows * (H + pad) + pad, ...) uint8 mosaic, row-major."""
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), fill, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return grid


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 image as PNG atomically (exact pixels, no resampling)."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


@dataclass
class EpochMonitor:
    """``on_epoch`` for :func:`train_gan`: what a run leaves behind as it trains.

    * every ``save_every`` epochs and after the last: a grid of images from the same
      ``grid_seed`` noise (so grids are comparable) as
      ``grid_dir/epoch_NNN.png`` (an earlier run's are removed first)
      and, with ``checkpoint``, the generator written there (atomically) with the history so far;
    * ``score(gan)``'s numbers (e.g. FID, KID) added to the epoch's stats every ``score_every``
      epochs (0: never), at the first epoch that ends past each of ``score_at_seconds`` (of
      training time, scoring excluded: the points of a quality-against-time curve), and with
      ``score_last`` after the last epoch;
    * with ``keep_best``, the run ends with the networks of its best-scored epoch (lowest KID;
      :attr:`selected` is that epoch's stats): a GAN can collapse late in a run (the shoes'
      projected GAN did after ~8 minutes, docs/gan-quality-study.md), and the reference it is
      scored against holds real *training* images only, so choosing by it touches no test data.
    """

    grid_dir: Path  # e.g. results/<dataset>/generated_images
    total_epochs: int
    grid_images: int = 64
    grid_seed: int = 12345
    score: Callable[[GAN], dict] | None = None
    score_every: int = 0
    score_at_seconds: tuple[float, ...] = ()
    score_last: bool = False
    save_every: int = 1
    keep_best: bool = True
    checkpoint: Path | None = None
    checkpoint_extra: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a new run: grids of an earlier, longer one would pass for this run's later epochs
        self.grid_dir = Path(self.grid_dir)
        self.grid_dir.mkdir(parents=True, exist_ok=True)
        for old in self.grid_dir.glob("epoch_[0-9][0-9][0-9]*.png"):
            old.unlink()
        self._marks = sorted(self.score_at_seconds)
        self._trained = 0.0
        self._best: tuple[dict, dict] | None = None  # (stats, networks' state) of the lowest KID

    @property
    def selected(self) -> dict:
        """The stats of the epoch whose networks the run ended with (the last without a score)."""
        if self.keep_best and self._best is not None:
            return self._best[0]
        return self.history[-1]

    def _score_due(self, epoch: int) -> bool:
        due = bool(self.score_every) and epoch % self.score_every == 0
        if self._marks and self._trained >= self._marks[0]:
            due = True
            self._marks = [m for m in self._marks if m > self._trained]
        return due or (self.score_last and epoch == self.total_epochs)

    def __call__(self, gan: GAN, stats: dict) -> None:
        self._trained += stats["seconds"]
        stats["train_seconds"] = self._trained
        last = gan.epoch == self.total_epochs
        if self.score and self._score_due(gan.epoch):
            stats.update(self.score(gan))
            if self.keep_best and "kid" in stats and (self._best is None or stats["kid"] < self._best[0]["kid"]):
                self._best = (stats, copy.deepcopy(gan.networks_state()))
        self.history.append(stats)
        due = gan.epoch % self.save_every == 0 or last
        if due:
            grid = image_grid(gan.generate(self.grid_images, seed=self.grid_seed))
            save_png(grid, self.grid_dir / f"epoch_{gan.epoch:03d}.png")
        if last and self.keep_best and self._best is not None and self._best[0] is not stats:
            gan.load_networks_state(self._best[1])  # what the checkpoint, samples and export use
            self.checkpoint_extra["selected_epoch"] = self._best[0]["epoch"]
        if due and self.checkpoint:
            save_checkpoint(gan, self.checkpoint, history=self.history, **self.checkpoint_extra)


def history_frame(history: list[dict]):
    """Per-epoch losses, D outputs, speed and (where measured) FID, KID and diversity."""

    columns = [*STAT_KEYS, "seconds", "train_seconds", "iters_per_s", "fid", "kid", "kid_std",
               "n_fake", "diversity_ratio"]
    frame = pd.DataFrame(history).set_index("epoch")
    return frame[[c for c in columns if c in frame.columns]]


def save_checkpoint(gan: GAN, path: str | os.PathLike, **extra) -> Path:
    """Write the generator (and discriminator) weights with their config, atomically.

    Optimiser states are left out: the file is for generating and inspecting, and stays small.
    ``extra`` (history, data fingerprint, ...) is stored beside; keep it to plain Python types.
    """
    state = {"config": asdict(gan.config), "epoch": gan.epoch, **gan.networks_state(),
             "step_log": gan.step_log,
             "environment": environment_fingerprint(), **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GAN, dict]:
    """A :class:`GAN` rebuilt from :func:`save_checkpoint`'s file, and the file's contents."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    gan = GAN(GANConfig.from_dict(state["config"]), torch.device(device))
    gan.load_state_dict(state)
    return gan, state
