"""Training the GAN: the adversarial loop, the run's plan for the machine at hand, checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..core import paths
from ..core.accel import autocast, images_to_device, pick_device
from ..core.images import fit_square
from ..core.repro import atomic_path, environment_fingerprint
from .networks import Discriminator, GANConfig, Generator, dcgan_init

STAT_KEYS = ("loss_d", "loss_g", "d_x", "d_g_z")


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] (the generator's tanh range), memory format kept."""
    return batch.float().div_(127.5).sub_(1.0)


class DCGAN:
    """A generator, a discriminator and their optimisers, trained on uint8 images."""

    def __init__(self, config: GANConfig, device: torch.device):
        self.config, self.device = config, torch.device(device)
        device = self.device
        torch.manual_seed(config.seed)
        self.G = Generator(config.nz, config.ngf, config.resolution).to(device)
        self.D = Discriminator(config.ndf, config.resolution, config.spectral_norm).to(device)
        self.G.apply(dcgan_init)
        self.D.apply(dcgan_init)
        if device.type == "cuda":
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        betas = (config.beta1, 0.999)
        fused = {"fused": True} if device.type == "cuda" else {}  # one kernel per step on GPUs
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas, **fused)
        self.loss = nn.BCEWithLogitsLoss()
        self.epoch = 0
        self.step_log: dict[str, list[float]] = {k: [] for k in STAT_KEYS}  # every step's numbers

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.nz, generator=generator, device="cpu").to(self.device)

    def step(self, real: torch.Tensor) -> torch.Tensor:
        """One update of D (real vs fake) and one of G (non-saturating loss).

        ``real`` is a float batch in [-1, 1]. Returns ``(loss_d, loss_g, D(x), D(G(z)))`` as one
        detached 4-vector on the device: reading it back is left to the caller, so a GPU never
        waits for the host inside an epoch.
        """
        n = real.shape[0]
        ones = torch.ones(n, device=self.device)
        zeros = torch.zeros(n, device=self.device)
        z = torch.randn(n, self.config.nz, device=self.device)
        with autocast(self.device):
            fake = self.G(z)
            d_real = self.D(real)
            d_fake = self.D(fake.detach())
            loss_d = self.loss(d_real.float(), ones) + self.loss(d_fake.float(), zeros)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        with autocast(self.device):
            d_fake_for_g = self.D(fake)
            loss_g = self.loss(d_fake_for_g.float(), ones)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return torch.stack([loss_d.detach(), loss_g.detach(),
                            torch.sigmoid(d_real.detach().float()).mean(),
                            torch.sigmoid(d_fake.detach().float()).mean()])

    def train_step(self, real: torch.Tensor) -> dict[str, float]:
        """:meth:`step` with its four numbers read back as floats (handy outside a loop)."""
        return dict(zip(STAT_KEYS, self.step(real).tolist()))

    def train_epoch(self, data: torch.Tensor, progress: bool = False) -> dict:
        """One pass over ``data`` ((N, 3, R, R) uint8 on the device) in shuffled batches.

        Returns the epoch means of :data:`STAT_KEYS`, the epoch number, its seconds and
        iterations per second; every step's values are appended to ``self.step_log``.
        """

        self.G.train()
        self.D.train()
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(
            self.config.seed * 100_003 + self.epoch)).to(data.device)
        bs = self.config.batch_size
        steps = len(data) // bs  # drop the ragged last batch: batch norm dislikes tiny ones
        if steps == 0:
            raise ValueError(f"{len(data)} training images are fewer than one batch of {bs}; "
                             "lower the batch size")
        trace = []
        start = time.perf_counter()
        for step in tqdm(range(steps), desc=f"GAN epoch {self.epoch + 1}", disable=not progress,
                         leave=False, mininterval=2.0):
            batch = data[order[step * bs:(step + 1) * bs]]
            if torch.rand(1).item() < 0.5:  # random horizontal flip of the whole batch
                batch = batch.flip(3)
            trace.append(self.step(to_unit_range(batch)))
        per_step = torch.stack(trace).cpu().numpy()  # the epoch's only device -> host copy
        self.epoch += 1
        seconds = time.perf_counter() - start
        stats: dict = {k: float(per_step[:, i].mean()) for i, k in enumerate(STAT_KEYS)}
        for i, k in enumerate(STAT_KEYS):
            self.step_log[k].extend(per_step[:, i].tolist())
        stats.update(epoch=self.epoch, seconds=seconds, iters_per_s=steps / max(seconds, 1e-9))
        return stats

    @torch.inference_mode()
    def generate(self, n: int, seed: int = 0, batch_size: int = 500) -> np.ndarray:
        """``n`` images as (n, R, R, 3) uint8, deterministic in ``seed`` (fixed noise)."""
        self.G.eval()
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            z = self.noise(min(batch_size, n - start), gen)
            with autocast(self.device):
                img = self.G(z).float()
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                       .permute(0, 2, 3, 1).cpu().numpy())
        self.G.train()
        return np.concatenate(out) if out else np.zeros((0, *(self.config.resolution,) * 2, 3), np.uint8)

    def state_dict(self) -> dict:
        return {"config": asdict(self.config), "epoch": self.epoch,
                "G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if "opt_g" in state:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.epoch = state["epoch"]
        if "step_log" in state:
            self.step_log = {k: list(v) for k, v in state["step_log"].items()}


def train_gan(images: np.ndarray, config: GANConfig, device: torch.device,
              on_epoch: Callable[[DCGAN, dict], None] | None = None,
              progress: bool = True, max_seconds: float | None = None) -> tuple[DCGAN, list[dict]]:
    """Train a DCGAN on (N, R, R, 3) uint8 ``images`` for ``config.epochs`` epochs.

    ``on_epoch(gan, stats)`` runs after every epoch (sample grids, checkpoints, metrics) and
    may add entries to ``stats``. ``max_seconds`` stops early at an epoch boundary once the
    time budget is spent.
    """

    if images.ndim != 4 or images.shape[1:] != (config.resolution, config.resolution, 3):
        raise ValueError(f"images have shape {images.shape}, config says (N, {config.resolution}, "
                         f"{config.resolution}, 3); resize them first (gan.real_training_images)")
    gan = DCGAN(config, device)
    data = images_to_device(images, gan.device)
    history = []
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="DCGAN", unit="epoch", disable=not progress, mininterval=1.0)
    for _ in bar:
        stats = gan.train_epoch(data, progress=progress)
        if on_epoch:
            on_epoch(gan, stats)
        history.append(stats)
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in STAT_KEYS})
        if max_seconds and time.perf_counter() - start > max_seconds:
            break
    bar.close()
    return gan, history


def demo_fakes(real: np.ndarray, n: int, seed: int, epochs: int = 20,
               progress: bool = True) -> tuple[np.ndarray, dict]:
    """The demo set's FAKE images (:data:`helpers.data.demo.MakeFakes`): a small DCGAN trained
    on the CPU (the demo is the same on every machine) for ``epochs`` on ``real`` (N, S, S, 3)
    uint8, then ``n`` samples; returns them and the manifest's record of the generator."""
    config = GANConfig(resolution=real.shape[1], ngf=32, ndf=32, batch_size=min(32, len(real)),
                       epochs=epochs, seed=seed)
    gan, history = train_gan(real, config, pick_device("cpu"), progress=progress)
    return gan.generate(n, seed=seed + 1), {"config": vars(config), "final_epoch": history[-1]}


def default_resolution(cache) -> int:
    """32 for datasets cached at fewer than 64 pixels (CIFAKE, the demo), else 64 (shoes)."""
    return 64 if cache.meta["image_size"] >= 64 else 32


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 images to ``size`` x ``size`` by the project's rule (``images.fit_square``)."""

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(fit_square(Image.fromarray(img), size))
    return out


def real_training_images(cache, resolution: int | None = None) -> np.ndarray:
    """The REAL (label 0) images of the cache's train split at ``resolution`` pixels.

    Only the train split: validation and test images never shape the GAN, so the detector's
    test set stays untouched by anything trained here.
    """
    resolution = resolution or default_resolution(cache)
    images, labels = cache.part("train")
    real = images[labels == 0]
    if len(real) == 0:
        raise ValueError(f"{cache.path}: the train split holds no REAL images to train the GAN on")
    return resize_images(real, resolution)


@dataclass
class GANPlan:
    """Everything notebook 04 runs with, the automatic choices resolved (see :func:`plan_run`)."""

    config: GANConfig
    device: str
    n_real: int  # REAL training images
    fid_samples: int  # generated images scored (and at most as many real ones)
    fid_every: int  # also score every k epochs (0: only after the last)
    n_export: int
    auto: list[str]  # which settings were chosen automatically

    def table(self):

        rows = {**asdict(self.config), "device": self.device, "REAL training images": self.n_real,
                "steps per epoch": self.n_real // self.config.batch_size,
                "fid_samples": self.fid_samples, "fid_every": self.fid_every, "n_export": self.n_export}
        return pd.DataFrame({"value": [str(v) for v in rows.values()],
                             "chosen": ["auto" if k in self.auto else "" for k in rows]},
                            index=list(rows))


#: Real training images from which a CPU run gets the short schedule (keeps `make all` within
#: an hour on CIFAKE; the full 25 epochs: GAN_PARAMS="-p EPOCHS 25").
CPU_LARGE_SET = 10_000


def plan_run(cache, device: torch.device, resolution: int | None = None, epochs: int | None = None,
             batch_size: int | None = None, width: int | None = None, lr_g: float = 2e-4,
             lr_d: float = 2e-4, fid_samples: int | None = None, fid_every: int | None = None,
             n_export: int | None = None, seed: int = 0) -> GANPlan:
    """Resolve notebook 04's parameters; ``None`` means "the default for this data and device".

    ===========  ==============================  ==========================================
    setting      the demo on a CPU               otherwise
    ===========  ==============================  ==========================================
    resolution   32                              32 for 32-px caches, 64 for larger (shoes)
    epochs       6                               25 (the DCGAN paper's); on a CPU with
                                                 10,000 or more real images 6 (CIFAKE: 107 s
                                                 an epoch on 2 cores, so ~11 minutes)
    batch_size   32                              128 (paper), 64 under 1,024 training images
    width        32 (ngf = ndf)                  64 (paper)
    fid_samples  64                              10,000 on a GPU, 500 on a CPU
    fid_every    0 (only after the last epoch)   5 on a GPU, 0 on a CPU
    n_export     as many as the REAL test images (a balanced cross-generator test set)
    ===========  ==============================  ==========================================

    The CPU demo values keep the notebook at about 45 s on 2 cores; Inception features cost
    0.15-0.4 s per image there, so FID on the demo uses few samples (and says so). An automatic
    batch size never exceeds the number of training images.
    """
    auto = []

    def pick(name, value, default):
        if value is None:
            auto.append(name)
            return default
        return value

    device = torch.device(device)
    small = cache.meta.get("is_demo", False) and device.type == "cpu"
    gpu = device.type == "cuda"
    resolution = pick("resolution", resolution, default_resolution(cache))
    _, labels = cache.part("train")
    n_real = int((labels == 0).sum())
    config = GANConfig(
        resolution=resolution,
        epochs=pick("epochs", epochs, 6 if small or (not gpu and n_real >= CPU_LARGE_SET) else 25),
        batch_size=pick("batch_size", batch_size,
                        min(32 if small else 64 if n_real < 1024 else 128, max(n_real, 2))),
        ngf=pick("ngf", width, 32 if small else 64), lr_g=lr_g, lr_d=lr_d, seed=seed)
    config.ndf = config.ngf
    if "ngf" in auto:
        auto.append("ndf")
    _, test_labels = cache.part("test")
    return GANPlan(
        config=config, device=str(device), n_real=n_real,
        fid_samples=pick("fid_samples", fid_samples, 64 if small else 10_000 if gpu else 500),
        fid_every=pick("fid_every", fid_every, 5 if gpu and not small else 0),
        n_export=pick("n_export", n_export, int((test_labels == 0).sum()) or n_real),
        auto=auto)


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
    """``on_epoch`` for :func:`train_gan`: what a run leaves behind after every epoch.

    * a grid of images from the same ``grid_seed`` noise (so epochs are comparable) as
      ``results/<dataset>/generated_images/epoch_NNN.png`` (an earlier run's are removed first);
    * every ``score_every`` epochs (0: never) and, with ``score_last``, after the last one,
      ``score(gan)``'s numbers (e.g. FID) added to the epoch's stats;
    * with ``checkpoint``, the generator written there (atomically) with the history so far.
    """

    dataset: str
    total_epochs: int
    grid_images: int = 64
    grid_seed: int = 12345
    score: Callable[[DCGAN], dict] | None = None
    score_every: int = 0
    score_last: bool = False
    checkpoint: Path | None = None
    checkpoint_extra: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a new run: grids of an earlier, longer one would pass for this run's later epochs
        for old in paths.results_dir(self.dataset, "generated_images").glob("epoch_[0-9][0-9][0-9].png"):
            old.unlink()

    def __call__(self, gan: DCGAN, stats: dict) -> None:
        grid = image_grid(gan.generate(self.grid_images, seed=self.grid_seed))
        save_png(grid, paths.results_dir(self.dataset, "generated_images") / f"epoch_{gan.epoch:03d}.png")
        due = self.score_every and gan.epoch % self.score_every == 0
        if self.score and (due or (self.score_last and gan.epoch == self.total_epochs)):
            stats.update(self.score(gan))
        self.history.append(stats)
        if self.checkpoint:
            save_checkpoint(gan, self.checkpoint, history=self.history, **self.checkpoint_extra)


def history_frame(history: list[dict]):
    """Per-epoch losses, D outputs, speed and (where measured) FID, KID and diversity."""

    columns = [*STAT_KEYS, "seconds", "iters_per_s", "fid", "kid", "kid_std", "n_fake",
               "diversity_ratio"]
    frame = pd.DataFrame(history).set_index("epoch")
    return frame[[c for c in columns if c in frame.columns]]


def save_checkpoint(gan: DCGAN, path: str | os.PathLike, **extra) -> Path:
    """Write the generator (and discriminator) weights with their config, atomically.

    Optimiser states are left out: the file is for generating and inspecting, and stays small.
    ``extra`` (history, data fingerprint, ...) is stored beside; keep it to plain Python types.
    """
    state = {"config": asdict(gan.config), "epoch": gan.epoch, "G": gan.G.state_dict(),
             "D": gan.D.state_dict(), "step_log": gan.step_log,
             "environment": environment_fingerprint(), **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DCGAN, dict]:
    """A :class:`DCGAN` rebuilt from :func:`save_checkpoint`'s file, and the file's contents."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    gan = DCGAN(GANConfig.from_dict(state["config"]), torch.device(device))
    gan.load_state_dict(state)
    return gan, state
