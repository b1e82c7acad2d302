"""Training the GAN: the adversarial loop, the run's plan for the machine at hand, checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..core import accel, paths
from ..core.accel import autocast, grad_scaler, images_to_device, load_scaler_state
from ..core.images import fit_square
from ..core.repro import atomic_path, environment_fingerprint
from .augment import diff_augment, parse_policy
from .ema import EMA
from .networks import GANConfig, build_discriminator, build_generator, dcgan_init, recipe_config

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


def _describe_probe(probe: dict) -> str:
    if "fp32" not in probe:
        return "not needed (fixed length, or a GPU)"
    bf16 = f"bfloat16 {probe['bf16']:,.0f}, " if "bf16" in probe else "no native bfloat16; "
    return (f"{bf16}fp32 {probe['fp32']:,.0f} training images/s"
            f"{' (measured earlier on this machine)' if probe.get('cached') else ''}"
            f"{'; not kept for later runs: ' + probe['unsteady'] if probe.get('unsteady') else ''}")


@dataclass
class GANPlan:
    """Everything notebook 04 runs with, the automatic choices resolved (see :func:`plan_run`)."""

    recipe: str
    config: GANConfig
    device: str
    n_real: int  # REAL training images
    fid_samples: int  # generated images scored (and as many real ones, and as many for the floor)
    score_every: int  # score every k epochs (and after the last): the KID-against-time curve
    save_every: int  # sample grid and checkpoint every k epochs (and after the last)
    n_export: int
    auto: list[str]  # which settings were chosen automatically
    # this CPU's measured training speed (images/s in fp32, and bfloat16 where native;
    # :func:`gan_speed_probe`), which sets a CPU run's length; empty when none was needed
    cpu_speed_probe: dict = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch(self.n_real)

    @property
    def steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def table(self):

        rows = {"recipe": self.recipe, **asdict(self.config), "device": self.device,
                "REAL training images": self.n_real,
                "steps per epoch": self.steps_per_epoch, "steps": self.steps,
                "fid_samples": self.fid_samples, "score_every": self.score_every,
                "save_every": self.save_every, "n_export": self.n_export,
                "CPU speed probe": _describe_probe(self.cpu_speed_probe)}
        return pd.DataFrame({"value": [str(v) for v in rows.values()],
                             "chosen": ["auto" if k in self.auto else "" for k in rows]},
                            index=list(rows))


#: The recipe with the most quality per CPU minute by resolution (docs/gan-quality-study.md:
#: KID after 5 training minutes on 2 cores, CIFAR-10 at 32 px and the shoes at 64 px).
DEFAULT_RECIPES = {32: "fastgan", 64: "fastgan"}
# The demo set's own fakes are DCGAN's (helpers/gan/demo.py, shipped weights): notebook 04's GAN
# on the demo is the default recipe, another architecture than those fakes.
#: a CPU run's default length: as many steps as fit these minutes at the speed this machine's
#: probe measures (:func:`gan_speed_probe`); scoring and export come on top
CPU_MINUTES = 13
#: a sustained training step costs more than the probe's best of a few on a fixed batch (the
#: batch's flip and scaling, the epoch's bookkeeping, a shared host's slower minutes): fastgan
#: at 64 px, 1.04 s against 0.95 probed on an AVX-512 EPYC, 1.84 s against 1.42 on an AVX2 one
STEP_OVERHEAD = 1.3
#: Resolutions at which a CPU run takes bfloat16 autocast by default, where this CPU has it
#: natively and the probe measures it at least BF16_MIN_SPEED_UP faster: 64 px, where the study
#: measured 1.45x the steps in 5 minutes at the same KID per step. 32-px runs stay fp32 unless
#: asked (1.2x faster in a micro-benchmark; their quality under bfloat16 was not measured).
CPU_BF16_RESOLUTIONS = (64,)
#: a GPU run's default length (not measured here: no GPU was lent; see the study)
GPU_STEPS = 20_000
#: the demo (on any device): a narrow network for DEMO_EPOCHS epochs, fewer where a CPU's measured
#: speed would take more than DEMO_SECONDS of training (`make all`'s 5-minute budget: on an
#: AVX2-only EPYC the 6 epochs took 124 s of a 476-s `make all`; 60 s left it at 298 s)
DEMO_EPOCHS = 6
DEMO_SECONDS = 45


def measure_gan_speed(config: GANConfig, steps: int = 2) -> dict[str, float]:
    """Training images per second of one GAN step of ``config`` on this CPU: ``{"fp32": ...}``,
    plus ``"bf16"`` (bfloat16 autocast) where the CPU multiplies bfloat16 natively
    (:func:`helpers.core.accel.cpu_has_bf16`; emulated it is slower, so not worth timing).

    Fresh networks for each precision, the two interleaved twice (best kept) so a passing load
    hits both alike, on a random batch; torch's random state is restored. A few seconds at 64 px.
    """
    state = torch.random.get_rng_state()
    res = config.resolution
    real = torch.rand(config.batch_size, 3, res, res) * 2 - 1
    rates = {"fp32": 0.0, "bf16": 0.0} if accel.cpu_has_bf16() else {"fp32": 0.0}
    try:
        for _ in range(2):
            for name, best in rates.items():
                gan = GAN(replace(config, cpu_bf16=name == "bf16"), torch.device("cpu"))
                gan.step(real)  # warm-up: first-call allocations and kernel selection
                start = time.perf_counter()
                for _ in range(steps):
                    gan.step(real)
                rates[name] = max(best, steps * config.batch_size / (time.perf_counter() - start))
    finally:
        torch.random.set_rng_state(state)
    return rates


def gan_speed_probe(config: GANConfig) -> dict:
    """:func:`measure_gan_speed` for ``config``, measured once per machine kind and cached in
    ``data/processed/cpu_precision.json`` (:func:`helpers.core.accel.cached_probe`; a reading
    taken with the machine loaded is used for this run and measured again next time).

    Why measured: the study's 2-core machines differed by 1.8x on the same step (a fastgan
    64-px step took 1.04 s on an EPYC with AVX-512 and 1.84 s on one with AVX2 only), so a fixed
    table of seconds per step broke the CPU budget on the slower one.
    """
    key = {"gan": config.generator, "discriminator": config.discriminator, "ngf": config.ngf,
           "ndf": config.ndf, "feature_size": config.feature_size, "resolution": config.resolution,
           "batch_size": config.batch_size}
    def measure() -> dict:  # with the load it ran under, so a busy machine's reading is not kept
        load = accel.load_per_core()
        return {**measure_gan_speed(config), "load_per_core": load}

    return accel.cached_probe(key, paths.probe_cache(), measure)


def use_cpu_bf16(probe: dict, resolution: int, asked: bool | None) -> bool:
    """bfloat16 autocast for a CPU run: never without native bfloat16 (no ``"bf16"`` in the
    probe); if ``asked`` is None, at :data:`CPU_BF16_RESOLUTIONS` where it is at least
    :data:`helpers.core.accel.BF16_MIN_SPEED_UP` times faster; else as asked."""
    if "bf16" not in probe:
        return False
    if asked is None:
        return resolution in CPU_BF16_RESOLUTIONS and accel.bf16_pays(probe)
    return asked


def default_recipe(resolution: int) -> str:
    """The study's best recipe at ``resolution`` pixels (:data:`DEFAULT_RECIPES`)."""
    return DEFAULT_RECIPES.get(resolution, "dcgan")


def plan_run(cache, device: torch.device, recipe: str | None = None, resolution: int | None = None,
             epochs: int | None = None, batch_size: int | None = None, width: int | None = None,
             lr_g: float = 2e-4, lr_d: float = 2e-4, fid_samples: int | None = None,
             scores: int | None = None, n_export: int | None = None, cpu_bf16: bool | None = None,
             seed: int = 0) -> GANPlan:
    """Resolve notebook 04's parameters; ``None`` means "the default for this data and device".

    ===========  ==============================  ==========================================
    setting      the demo (any device)           otherwise
    ===========  ==============================  ==========================================
    recipe       :func:`default_recipe`: ``fastgan`` (FastGAN-lite G, projected D)
    resolution   32                              32 for 32-px caches, 64 for larger (shoes)
    epochs       6, fewer where this CPU's       CPU: as many as fit :data:`CPU_MINUTES` of
                 measured speed would take       training at this CPU's measured speed
                 over :data:`DEMO_SECONDS` (a    (:func:`gan_speed_probe`); GPU (and MPS):
                 GPU or MPS runs the 6 in        :data:`GPU_STEPS`;
                 seconds)
                                                 epochs of ``epoch_steps`` when full passes
                                                 are too long for ``scores`` scores
    batch_size   32                              64 (the study's)
    width        32 (ngf = ndf)                  64
    fid_samples  64                              500 on a CPU or MPS (at most half the real
                                                 images: a second set makes the floor), 5,000
                                                 on a CUDA GPU (scored there: quality.fid_kid)
    scores       1 (after the last epoch)        8 on a CPU, 10 on a GPU, at even epochs
    n_export     as many as the REAL test images (a balanced cross-generator test set)
    ===========  ==============================  ==========================================

    An automatic batch size never exceeds the number of training images.

    ``cpu_bf16`` (CPU only; a GPU always uses AMP): bfloat16 autocast for training. ``None``
    takes it at :data:`CPU_BF16_RESOLUTIONS` where this CPU's measured probe says it pays
    (:func:`use_cpu_bf16`), and fp32 elsewhere; ``True`` takes it wherever the CPU multiplies
    bfloat16 natively. The automatic length uses the probed speed of the chosen precision, so
    a bfloat16 run holds more steps in the same minutes.
    """
    auto = []

    def pick(name, value, default):
        if value is None:
            auto.append(name)
            return default
        return value

    device = torch.device(device)
    # the demo is short on every device: a GPU's demo once ran GPU_STEPS and scored 5,000 images
    # ten times, tens of minutes where a CPU took four
    small = cache.meta.get("is_demo", False)
    gpu = device.type == "cuda"
    resolution = pick("resolution", resolution, default_resolution(cache))
    recipe = pick("recipe", recipe, default_recipe(resolution))
    _, labels = cache.part("train")
    n_real = int((labels == 0).sum())
    batch_size = pick("batch_size", batch_size, min(32 if small else 64, max(n_real, 2)))
    steps_per_epoch = max(1, n_real // batch_size)
    n_scores = pick("scores", scores, 1 if small else 10 if gpu else 8)
    width = pick("ngf", width, 32 if small else 64)
    probe, bf16 = {}, False
    if device.type == "cpu":
        probe = gan_speed_probe(recipe_config(recipe, resolution=resolution, batch_size=batch_size,
                                              ngf=width, ndf=width, seed=seed))
        bf16 = use_cpu_bf16(probe, resolution, cpu_bf16)
    if cpu_bf16 is None:
        auto.append("cpu_bf16")
    # seconds a sustained training step takes on this CPU (None off the CPU: no probe)
    per_step = STEP_OVERHEAD * batch_size / probe["bf16" if bf16 else "fp32"] if probe else None
    epoch_steps = 0
    if small:  # no probe off the CPU: an accelerator runs the demo's few hundred steps in seconds
        fits = int(DEMO_SECONDS / per_step) // steps_per_epoch if per_step else DEMO_EPOCHS
        default_epochs = max(1, min(DEMO_EPOCHS, fits))
    else:
        steps = int(CPU_MINUTES * 60 / per_step) if per_step else GPU_STEPS
        if epochs is None and steps_per_epoch * n_scores > steps:
            # full passes too long to score n_scores times within the budget (CIFAKE's 45,000
            # photos): shorter epochs, one score each
            epoch_steps = max(1, steps // n_scores)
            steps_per_epoch = epoch_steps
            auto.append("epoch_steps")
        default_epochs = max(1, steps // steps_per_epoch)  # within the budget
    config = recipe_config(
        recipe, resolution=resolution, epochs=pick("epochs", epochs, default_epochs),
        batch_size=batch_size, ngf=width, lr_g=lr_g, lr_d=lr_d, epoch_steps=epoch_steps,
        cpu_bf16=bf16, seed=seed)
    config.ndf = config.ngf
    if "ngf" in auto:
        auto.append("ndf")
    _, test_labels = cache.part("test")
    return GANPlan(
        recipe=recipe, config=config, device=str(device), n_real=n_real,
        fid_samples=pick("fid_samples", fid_samples,
                         64 if small else 5_000 if gpu else min(500, max(2, n_real // 2))),
        score_every=max(1, math.ceil(config.epochs / max(1, n_scores))),
        save_every=max(1, config.epochs // 20),
        n_export=pick("n_export", n_export, int((test_labels == 0).sum()) or n_real),
        auto=auto, cpu_speed_probe=probe)


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
