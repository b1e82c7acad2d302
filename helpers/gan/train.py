"""Training the GAN: the adversarial loop, sample grids, the epoch monitor, checkpoints (the run's
plan for the machine at hand is :mod:`.plan`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..core.accel import autocast, grad_scaler, images_to_device, load_scaler_state
from ..core.images import fit_square
from .augment import diff_augment, parse_policy
from .config import GANConfig
from .ema import EMA
from .networks import build_discriminator, build_generator, dcgan_init

STAT_KEYS = ("loss_d", "loss_g", "d_x", "d_g_z")


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] (the generator's tanh range), memory format kept."""
    return batch.float().div_(127.5).sub_(1.0)


class GAN:
    """A generator, a discriminator and their optimisers, trained on uint8 images.

    What :class:`GANConfig` adds to DCGAN: DiffAugment (``augment``, :mod:`.augment`) on every
    image the discriminator sees, the hinge loss, a projected discriminator, and an exponential
    moving average of the generator (``ema_decay``, :class:`.ema.EMA`) that :meth:`generate`
    samples from.

    Precision: training takes :func:`helpers.core.accel.amp_dtype`'s (bfloat16 on CUDA from
    sm_80, float16 with a loss scaler per network below it, fp32 on MPS, fp32 or asked-for
    native bfloat16 on a CPU); sampling is fp32 on every device (:meth:`generate`).
    """

    def __init__(self, config: GANConfig, device: torch.device):
        self.config, self.device = config, torch.device(device)
        device = self.device
        torch.manual_seed(config.seed)
        self.G = build_generator(config).to(device)
        self.D = build_discriminator(config).to(device)
        self.G.apply(dcgan_init)
        # the projected discriminator's Lite0 and random projection keep their own weights
        (self.D.heads if config.discriminator == "projected" else self.D).apply(dcgan_init)
        if device.type == "cuda":
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        betas = (config.beta1, config.beta2)
        fused = {"fused": True} if device.type == "cuda" else {}  # one kernel per step on GPUs
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas, **fused)
        self.opt_d = torch.optim.Adam([p for p in self.D.parameters() if p.requires_grad],
                                      lr=config.lr_d, betas=betas, **fused)
        # float16 (CUDA below sm_80) scales each network's loss; elsewhere a pass-through
        self.scaler_d = grad_scaler(device, cpu=config.cpu_bf16)
        self.scaler_g = grad_scaler(device, cpu=config.cpu_bf16)
        self.G_ema = EMA(self.G, config.ema_decay) if config.ema_decay else None
        parse_policy(config.augment)  # a typo fails here, not after the first epoch
        self.augment_policy = config.augment
        self.epoch = 0
        self.step_log: dict[str, list[float]] = {k: [] for k in STAT_KEYS}  # every step's numbers

    @property
    def sampler(self) -> nn.Module:
        """The generator that makes the images: the EMA copy when there is one."""
        return self.G_ema.module if self.G_ema is not None else self.G

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.nz, generator=generator, device="cpu").to(self.device)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment with the config's policy (identity without one); real and fake alike."""
        return diff_augment(images, self.augment_policy) if self.augment_policy else images

    def losses(self, d_real: torch.Tensor | None, d_fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss (``d_real`` given) or the generator's, from float logits."""
        if self.config.loss == "hinge":  # Lim & Ye 2017; Miyato et al. 2018
            if d_real is None:
                return -d_fake.mean()
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if d_real is None:  # non-saturating: maximise log D(G(z))
            return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))

    def step(self, real: torch.Tensor) -> torch.Tensor:
        """One update of D (real vs fake) and one of G, then of the EMA generator.

        ``real`` is a float batch in [-1, 1]. Both networks see images only through
        :meth:`augment`. Returns ``(loss_d, loss_g, D(x), D(G(z)))`` (D's outputs as mean
        sigmoid of its logits) as one detached 4-vector on the device: reading it back is
        left to the caller, and nothing in the step (augmentation, loss scaling, EMA) reads a
        number back either, so a GPU never waits for the host inside an epoch
        (:func:`helpers.core.accel.count_host_syncs` checks it on a GPU).
        """
        n = real.shape[0]
        z = torch.randn(n, self.config.nz, device=self.device)
        with autocast(self.device, cpu=self.config.cpu_bf16):
            fake = self.G(z)
            d_real = self.D(self.augment(real)).float()
            d_fake = self.D(self.augment(fake.detach())).float()
            loss_d = self.losses(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)  # fused Adam takes the scaler's inf check on the device
        self.scaler_d.update()
        with autocast(self.device, cpu=self.config.cpu_bf16):
            loss_g = self.losses(None, self.D(self.augment(fake)).float())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        return torch.stack([loss_d.detach(), loss_g.detach(),
                            torch.sigmoid(d_real.detach()).mean(),
                            torch.sigmoid(d_fake.detach()).mean()])

    def train_step(self, real: torch.Tensor) -> dict[str, float]:
        """:meth:`step` with its four numbers read back as floats (handy outside a loop)."""
        return dict(zip(STAT_KEYS, self.step(real).tolist()))

    def train_epoch(self, data: torch.Tensor, progress: bool = False) -> dict:
        """One pass over ``data`` ((N, 3, R, R) uint8 on the device) in shuffled batches
        (at most ``config.epoch_steps`` of them when that is set).

        Returns the epoch means of :data:`STAT_KEYS`, the epoch number, its seconds and
        iterations per second; every step's values are appended to ``self.step_log``.
        """

        self.G.train()
        self.D.train()
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(
            self.config.seed * 100_003 + self.epoch)).to(data.device)
        bs = self.config.batch_size
        steps = self.config.steps_per_epoch(len(data))
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
        """``n`` images as (n, R, R, 3) uint8, deterministic in ``seed`` (fixed noise).

        Sampled in fp32 on every device (:data:`helpers.core.accel.INFERENCE_DTYPE`), whatever
        precision trained the generator: the export, the FID/KID scores and the sample grids of
        a GPU run come from the same arithmetic as a CPU run's.
        """
        sampler = self.sampler
        was_training = sampler.training
        sampler.eval()
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            z = self.noise(min(batch_size, n - start), gen)
            img = sampler(z).float()  # fp32: sampling is cheap, keep every bit
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                       .permute(0, 2, 3, 1).cpu().numpy())
        sampler.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, *(self.config.resolution,) * 2, 3), np.uint8)

    def networks_state(self) -> dict:
        """G, D (without a projected D's Lite0, which the wheel holds) and the EMA generator."""
        state = {"G": self.G.state_dict(), "D": (self.D.trainable_state_dict()
                 if hasattr(self.D, "trainable_state_dict") else self.D.state_dict())}
        if self.G_ema is not None:
            state["G_ema"] = self.G_ema.state_dict()
        return state

    def state_dict(self) -> dict:
        return {"config": asdict(self.config), "epoch": self.epoch, **self.networks_state(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict()}

    def load_networks_state(self, state: dict) -> None:
        """Put back what :meth:`networks_state` returned (G, D and the EMA generator)."""
        self.G.load_state_dict(state["G"])
        if hasattr(self.D, "load_trainable_state_dict"):
            self.D.load_trainable_state_dict(state["D"])
        else:
            self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])

    def load_state_dict(self, state: dict) -> None:
        self.load_networks_state(state)
        if "opt_g" in state:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        # a state saved in another precision (empty scaler) leaves the fresh scaler as it is
        load_scaler_state(self.scaler_g, state.get("scaler_g"))
        load_scaler_state(self.scaler_d, state.get("scaler_d"))
        self.epoch = state["epoch"]
        if "step_log" in state:
            self.step_log = {k: list(v) for k, v in state["step_log"].items()}


def train_gan(images: np.ndarray, config: GANConfig, device: torch.device,
              on_epoch: Callable[[GAN, dict], None] | None = None,
              progress: bool = True, max_seconds: float | None = None) -> tuple[GAN, list[dict]]:
    """Train a GAN on (N, R, R, 3) uint8 ``images`` for ``config.epochs`` epochs.

    ``on_epoch(gan, stats)`` runs after every epoch (sample grids, checkpoints, metrics) and
    may add entries to ``stats``. ``max_seconds`` stops early at an epoch boundary once that
    much training time is spent (what ``on_epoch`` does is not counted): for studies at a
    time budget; runs meant to be reproduced stop at ``config.epochs``.
    """

    if images.ndim != 4 or images.shape[1:] != (config.resolution, config.resolution, 3):
        raise ValueError(f"images have shape {images.shape}, config says (N, {config.resolution}, "
                         f"{config.resolution}, 3); resize them first (gan.real_training_images)")
    gan = GAN(config, device)
    data = images_to_device(images, gan.device)
    history = []
    trained = 0.0
    bar = tqdm(range(config.epochs), desc="GAN", unit="epoch", disable=not progress, mininterval=1.0)
    for _ in bar:
        stats = gan.train_epoch(data, progress=progress)
        if on_epoch:
            on_epoch(gan, stats)
        history.append(stats)
        trained += stats["seconds"]
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in STAT_KEYS})
        if max_seconds and trained >= max_seconds:
            break
    bar.close()
    return gan, history


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
