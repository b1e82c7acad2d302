"""DCGAN (Radford, Metz & Chintala, 2016) for 32x32 and 64x64 RGB images.

Used twice: notebook 04 trains it on a dataset's real images to make a second, unseen
generator for the detector; :mod:`helpers.demo` trains a small one to make the offline demo
set's fake images.

The pieces, in the order notebook 04 uses them:

* :func:`real_training_images`: the REAL images of the train split, at the GAN's resolution.
* :class:`GANConfig`, :func:`train_gan` (with :class:`EpochMonitor` as ``on_epoch``: fixed-noise
  sample grids and optional quality scores after every epoch), :func:`save_checkpoint`.
* :func:`export_images`: N generated images written the way the dataset's real images are
  stored (same JPEG quantisation tables and chroma subsampling, or lossless PNG), with a
  manifest, into ``data/processed/<dataset>/gan/``; :func:`load_exported` reads them back.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from . import paths
from .accel import autocast, images_to_device
from .repro import atomic_path, environment_fingerprint, fingerprint_bytes, write_json

EXPORT_FOLDER = "gan"  # data/processed/<dataset>/gan/
STAT_KEYS = ("loss_d", "loss_g", "d_x", "d_g_z")


@dataclass
class GANConfig:
    """Hyper-parameters of a DCGAN run (the paper's defaults)."""

    resolution: int = 32  # 32 or 64
    nz: int = 100  # latent size
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    spectral_norm: bool = False  # spectral normalisation in D (replaces its batch norm)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 128
    epochs: int = 25
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> GANConfig:
        """Rebuild a config saved with ``asdict`` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _n_stages(resolution: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"DCGAN supports 32 or 64 pixels, not {resolution}")
    return int(math.log2(resolution)) - 2  # 4x4 -> resolution


class Generator(nn.Module):
    """z (N, nz) -> image (N, 3, R, R) in [-1, 1]: transposed convs doubling the size."""

    def __init__(self, nz: int = 100, ngf: int = 64, resolution: int = 32):
        super().__init__()
        stages = _n_stages(resolution)
        width = ngf * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class Discriminator(nn.Module):
    """image (N, 3, R, R) -> one logit per image (real > 0): strided convs halving the size."""

    def __init__(self, ndf: int = 64, resolution: int = 32, spectral_norm: bool = False):
        super().__init__()
        stages = _n_stages(resolution)
        norm = _sn if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [norm(nn.Conv2d(3, ndf, 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(stages - 1):
            layers.append(norm(nn.Conv2d(width, width * 2, 4, 2, 1, bias=False)))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            width *= 2
        layers.append(norm(nn.Conv2d(width, 1, 4, 1, 0, bias=False)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


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
        from tqdm.auto import tqdm

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
    from tqdm.auto import tqdm

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


# --------------------------------------------------------------------------- data in

def default_resolution(cache) -> int:
    """32 for datasets cached at fewer than 64 pixels (CIFAKE, the demo), else 64 (shoes)."""
    return 64 if cache.meta["image_size"] >= 64 else 32


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Square uint8 images to ``size`` x ``size`` by the project's rule (``images.fit_square``)."""
    from .images import fit_square

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
        import pandas as pd

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


def quality_figure(history: list[dict]):
    """FID and KID over the epochs where they were measured (with the sample count)."""
    import matplotlib.pyplot as plt

    scored = [h for h in history if "fid" in h]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    epochs = [h["epoch"] for h in scored]
    axes[0].plot(epochs, [h["fid"] for h in scored], "o-")
    axes[0].set(xlabel="epoch", ylabel="FID (lower is better)")
    axes[1].errorbar(epochs, [1000 * h["kid"] for h in scored], yerr=[1000 * h["kid_std"] for h in scored],
                     fmt="o-", capsize=3)
    axes[1].set(xlabel="epoch", ylabel="KID x 1000 (lower is better)")
    if scored:
        fig.suptitle(f"{scored[-1]['n_fake']} generated vs {scored[-1]['n_real']} real images", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- outputs of a run

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
    import pandas as pd

    columns = [*STAT_KEYS, "seconds", "iters_per_s", "fid", "kid", "kid_std", "n_fake",
               "diversity_ratio"]
    frame = pd.DataFrame(history).set_index("epoch")
    return frame[[c for c in columns if c in frame.columns]]


def curves_figure(gan: DCGAN):
    """Generator and discriminator losses, and D(x) vs D(G(z)), for every step of ``gan``."""
    import matplotlib.pyplot as plt

    log = {k: np.asarray(v) for k, v in gan.step_log.items()}
    x = np.arange(1, len(log["loss_d"]) + 1) / max(len(log["loss_d"]), 1) * gan.epoch  # in epochs
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(x, log["loss_d"], label="discriminator", lw=1)
    axes[0].plot(x, log["loss_g"], label="generator", lw=1)
    axes[0].set(xlabel="epoch", ylabel="BCE loss", title="Losses (every step)")
    axes[1].plot(x, log["d_x"], label="D(x): real", lw=1)
    axes[1].plot(x, log["d_g_z"], label="D(G(z)): generated", lw=1)
    axes[1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].set(xlabel="epoch", ylabel="mean probability 'real'", ylim=(0, 1),
                title="Discriminator outputs (every step)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def samples_figure(generated: np.ndarray, real: np.ndarray, columns: int = 8):
    """Generated images beside real training images, at the same size."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    for ax, images, title in ((axes[0], generated, f"DCGAN ({len(generated)} samples, fixed noise)"),
                              (axes[1], real, f"real training images ({len(real)})")):
        ax.imshow(image_grid(images, columns), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


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


# --------------------------------------------------------------------------- export

@dataclass
class Encoding:
    """How a group of the dataset's real images is stored: one JPEG table set, or lossless."""

    kind: str  # "jpeg" or "png"
    share: float  # fraction of the real (train) images stored this way
    n_real: int
    qtables_id: str | None = None
    qtables: dict[int, list[int]] | None = None  # as Pillow reads them (``Image.quantization``)
    subsampling: int = -1  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, -1 = unknown
    jpeg_quality: int | None = None  # IJG-equivalent estimate, for the record only
    probe_files: list[str] = field(default_factory=list)
    note: str = ""

    def describe(self) -> dict:
        out = asdict(self)
        if self.qtables is not None:
            out["qtables"] = {str(k): v for k, v in self.qtables.items()}
        return out


def real_encodings(cache, max_probe: int = 25) -> list[Encoding]:
    """The storage formats of the cache's REAL train images, read from their original files.

    The cache's ``records.csv`` gives every file's format and ``qtables_id``; for each distinct
    table set up to ``max_probe`` files are opened (headers only) to read the exact tables and
    the chroma subsampling, which the records do not hold. Non-JPEG files count as lossless.
    """
    from PIL import JpegImagePlugin

    from .data import iter_source

    records = cache.records()
    real = records[(records["label"] == 0) & (records["split"] == "train")]
    if real.empty:
        real = records[records["label"] == 0]
    fmt = real["format"].fillna("?").astype(str).str.upper()
    ids = real["qtables_id"].astype(object).where(fmt == "JPEG")
    groups = Counter(ids.fillna("__lossless__"))
    wanted: dict[str, list[str]] = {}
    for key in groups:
        if key != "__lossless__":
            wanted[key] = real.loc[ids == key, "file"].head(max_probe).tolist()
    found: dict[str, list[tuple[dict, int]]] = {k: [] for k in wanted}
    by_file = {f: k for k, files in wanted.items() for f in files}
    if by_file:
        source = Path(cache.meta["source"])
        if not source.exists():
            raise FileNotFoundError(
                f"{source}: the dataset's original files (cache.meta['source']) are gone, so their "
                "JPEG tables cannot be read. Point DATA_SOURCE at the dataset again (or restore "
                "the folder) and rerun.")
        for rel, read in iter_source(source):
            key = by_file.get(rel)
            if key is None:
                continue
            with Image.open(io.BytesIO(read())) as img:
                tables = {k: list(v) for k, v in img.quantization.items()}
                found[key].append((tables, JpegImagePlugin.get_sampling(img)))
    total = sum(groups.values())
    encodings = []
    for key, count in groups.most_common():
        if key == "__lossless__":
            formats = sorted(set(fmt[ids.isna()]))
            encodings.append(Encoding("png", count / total, count,
                                      note=f"real images stored as {', '.join(formats)}: exported as "
                                           "lossless PNG"))
            continue
        probes = found[key]
        if not probes:
            raise FileNotFoundError(f"none of {wanted[key][:3]} (tables {key}) was found in "
                                    f"{cache.meta['source']}; has the source changed since the cache "
                                    "was built? Rebuild it with data.prepare(..., force=True).")
        samplings = Counter(s for _, s in probes)
        subsampling = samplings.most_common(1)[0][0]
        note = "" if len(samplings) == 1 else f"mixed chroma subsampling among probes: {dict(samplings)}"
        quality = real.loc[ids == key, "jpeg_quality"].dropna()
        encodings.append(Encoding(
            "jpeg", count / total, count, qtables_id=key, qtables=probes[0][0],
            subsampling=int(subsampling), jpeg_quality=int(quality.iloc[0]) if len(quality) else None,
            probe_files=wanted[key][:len(probes)], note=note))
    return encodings


def encode_image(image: np.ndarray, encoding: Encoding) -> tuple[bytes, str]:
    """One (H, W, 3) uint8 image as file bytes in ``encoding``; returns the bytes and suffix."""
    buffer = io.BytesIO()
    img = Image.fromarray(image)
    if encoding.kind == "jpeg":
        tables = encoding.qtables or {}
        qtables = [tables[k] for k in sorted(tables)][:2]  # luma, chroma (CMYK's extra dropped)
        img.save(buffer, format="JPEG", qtables=qtables, subsampling=encoding.subsampling)
        return buffer.getvalue(), ".jpg"
    img.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def export_dir(dataset: str) -> Path:
    """``data/processed/<dataset>/gan/``: where the exported images and their manifest live."""
    return paths.processed_dir(dataset) / EXPORT_FOLDER


def export_images(gan: DCGAN, cache, n: int, seed: int = 0,
                  checkpoint: str | os.PathLike | None = None,
                  progress: bool = True) -> dict:
    """Generate ``n`` images and store them like the dataset's real images; return the manifest.

    Each image gets the encoding of a real image drawn at random (seeded), so the exported
    set has the real set's mix of JPEG tables, chroma subsampling and lossless files: a
    detector cannot tell the GAN's images apart by compression alone. The folder
    (:func:`export_dir`) is written beside its final name and then swapped in, so a reader
    sees the previous export or the new one, never half of one.
    """
    from tqdm.auto import tqdm

    dataset = cache.meta["dataset"]
    encodings = real_encodings(cache)
    rng = np.random.default_rng(seed)
    choice = rng.choice(len(encodings), size=n, p=[e.share for e in encodings])
    images = gan.generate(n, seed=seed)
    target = export_dir(dataset)
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    for i in tqdm(range(n), desc="exporting", disable=not progress, mininterval=1.0):
        data, suffix = encode_image(images[i], encodings[choice[i]])
        name = f"{i:05d}{suffix}"
        (staging / name).write_bytes(data)
        files.append(name)
    used = Counter(choice.tolist())
    kinds = {encodings[i].kind for i in used}
    ckpt = Path(checkpoint) if checkpoint else None
    manifest = {
        "dataset": dataset, "count": n, "resolution": gan.config.resolution, "seed": seed,
        "generator_checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_fingerprint": fingerprint_bytes(ckpt.read_bytes()) if ckpt and ckpt.exists() else None,
        "generator_epoch": gan.epoch, "gan_config": asdict(gan.config),
        "data_fingerprint": cache.fingerprint,
        "encoding": "JPEG" if kinds == {"jpeg"} else "PNG" if kinds == {"png"} else "mixed JPEG/PNG",
        "encoding_note": ("JPEG with the quantisation tables and chroma subsampling read from the "
                          "real images' own files" if "jpeg" in kinds else "") +
                         (" / " if len(kinds) == 2 else "") +
                         ("lossless PNG: the real images are not JPEG" if "png" in kinds else ""),
        "tables": [dict(e.describe(), exported=used.get(i, 0)) for i, e in enumerate(encodings)],
        "qtables_ids": sorted({encodings[i].qtables_id for i in used if encodings[i].qtables_id}),
        "files": files,
        "file_encoding": [int(c) for c in choice],  # index into "tables", per file
        "pixels_fingerprint": fingerprint_bytes(images),
        "environment": environment_fingerprint(),
    }
    write_json(staging / "manifest.json", manifest)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return manifest


def load_manifest(dataset: str) -> dict | None:
    """The manifest of ``dataset``'s exported GAN images, or None if there is no export."""
    import json

    path = export_dir(dataset) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_exported(dataset: str, size: int | None = None) -> np.ndarray | None:
    """The exported GAN images of ``dataset`` as (N, H, W, 3) uint8, or None if none exist.

    ``size=None`` gives the pixels as decoded from the files (the GAN's resolution). With a
    ``size`` they go through the project's image rule (:func:`helpers.images.decode`, with the
    dataset's JPEG harmonisation), exactly as the detector's cache treats real images.
    """
    from .data import get_spec
    from .images import decode

    manifest = load_manifest(dataset)
    if manifest is None:
        return None
    folder = export_dir(dataset)
    out = []
    for name in manifest["files"]:
        path = folder / name
        if size is None:
            with Image.open(path) as img:
                out.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        else:
            out.append(decode(path.read_bytes(), size, str(path), get_spec(dataset).harmonise_jpeg)[0])
    if not out:
        side = size or manifest["resolution"]
        return np.zeros((0, side, side, 3), np.uint8)
    return np.stack(out)


def verify_export(dataset: str) -> dict:
    """Re-open every exported file and check it is stored as its manifest says.

    For JPEG files: the quantisation tables and the chroma subsampling must equal those read
    from the real images. Returns counts of files checked and of mismatches (with names).
    """
    from PIL import JpegImagePlugin

    manifest = load_manifest(dataset)
    if manifest is None:
        raise FileNotFoundError(f"{export_dir(dataset)}: no exported GAN images (run notebook 04)")
    folder = export_dir(dataset)
    checked, mismatched = Counter(), []
    for name, index in zip(manifest["files"], manifest["file_encoding"]):
        expected = manifest["tables"][index]
        with Image.open(folder / name) as img:
            if expected["kind"] == "jpeg":
                tables = {str(k): list(v) for k, v in img.quantization.items()}
                want = {k: v for k, v in expected["qtables"].items() if int(k) < 2}
                ok = (img.format == "JPEG" and tables == want
                      and (expected["subsampling"] < 0
                           or JpegImagePlugin.get_sampling(img) == expected["subsampling"]))
            else:
                ok = img.format == "PNG"
        checked[img.format] += 1
        if not ok:
            mismatched.append(name)
    return {"checked": dict(checked), "mismatched": len(mismatched), "mismatched_files": mismatched[:20]}
