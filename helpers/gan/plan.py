"""The GAN run's plan for the machine at hand (notebook 04's automatic choices): the recipe, the
length from the measured speed of this CPU (or the accelerator's fixed length), bfloat16 where it
pays, the demo's short run, the scores and the export. Split from :mod:`.train`, which trains.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import pandas as pd
import torch

from ..core import accel, paths
from .networks import GANConfig, recipe_config
from .train import GAN, default_resolution


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
