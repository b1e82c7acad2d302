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

from ..core import accel, paths, precision_probe
from .config import PLAN, Budget, GANConfig, recipe_config
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
    ``data/processed/cpu_precision.json`` (:func:`helpers.core.precision_probe.cached_probe`; a reading
    taken with the machine loaded is used for this run and measured again next time).

    Why measured: the study's 2-core machines differed by 1.8x on the same step (a fastgan
    64-px step took 1.04 s on an EPYC with AVX-512 and 1.84 s on one with AVX2 only), so a fixed
    table of seconds per step broke the CPU budget on the slower one.
    """
    key = {"gan": config.generator, "discriminator": config.discriminator, "ngf": config.ngf,
           "ndf": config.ndf, "feature_size": config.feature_size, "resolution": config.resolution,
           "batch_size": config.batch_size}
    def measure() -> dict:  # with the load it ran under, so a busy machine's reading is not kept
        load = precision_probe.load_per_core()
        return {**measure_gan_speed(config), "load_per_core": load}

    return precision_probe.cached_probe(key, paths.probe_cache(), measure)


def use_cpu_bf16(probe: dict, resolution: int, asked: bool | None) -> bool:
    """bfloat16 autocast for a CPU run: never without native bfloat16 (no ``"bf16"`` in the
    probe); if ``asked`` is None, at ``PLAN.cpu_bf16_resolutions`` where it is at least
    :data:`helpers.core.precision_probe.BF16_MIN_SPEED_UP` times faster; else as asked."""
    if "bf16" not in probe:
        return False
    if asked is None:
        return resolution in PLAN.cpu_bf16_resolutions and precision_probe.bf16_pays(probe)
    return asked


def run_length(budget: Budget, seconds_per_step: float | None, steps_per_epoch: int,
               scores: int) -> tuple[int, int]:
    """(epochs, epoch_steps) of a run whose length was not asked: as many steps as fit the
    budget's seconds at the measured speed (its fixed steps where none was measured); the demo
    its epochs, fewer where they would take longer. Full passes too long to score ``scores``
    times (CIFAKE's 45,000 photos) become epochs of ``epoch_steps`` steps, one score each."""
    steps = budget.steps if seconds_per_step is None else int(budget.seconds / seconds_per_step)
    if budget.epochs:
        return (budget.epochs if steps is None else max(1, min(budget.epochs, steps // steps_per_epoch))), 0
    if steps_per_epoch * scores > steps:
        epoch_steps = max(1, steps // scores)
        return max(1, steps // epoch_steps), epoch_steps
    return max(1, steps // steps_per_epoch), 0


def plan_run(cache, device: torch.device, recipe: str | None = None, resolution: int | None = None,
             epochs: int | None = None, batch_size: int | None = None, width: int | None = None,
             lr_g: float | None = None, lr_d: float | None = None, fid_samples: int | None = None,
             scores: int | None = None, n_export: int | None = None, cpu_bf16: bool | None = None,
             seed: int = 0) -> GANPlan:
    """Resolve notebook 04's parameters; ``None`` means the default of :data:`PLAN` (helpers/gan/
    config.py) for this data and device: the recipe for the resolution (32 px for 32-px caches,
    64 for larger), then the budget of the demo (on any device), a CPU, CUDA or another
    accelerator: batch size (never above the REAL training images), width (ngf = ndf), scores,
    generated images per score, and the length (:func:`run_length`, from this CPU's measured
    speed, :func:`gan_speed_probe`, where it is a CPU). The learning rates are the recipe's; the
    export as many images as the REAL test images (a balanced cross-generator test set).

    ``cpu_bf16`` (CPU only; a GPU always uses AMP): bfloat16 autocast for training. ``None``
    takes it where :func:`use_cpu_bf16` says it pays, ``True`` wherever the CPU multiplies
    bfloat16 natively. The length uses the probed speed of the chosen precision, so a bfloat16
    run holds more steps in the same minutes.
    """
    auto = []

    def pick(name, value, default):
        if value is None:
            auto.append(name)
            return default
        return value

    device = torch.device(device)
    budget = PLAN.budget(cache.meta.get("is_demo", False), device.type)
    resolution = pick("resolution", resolution, default_resolution(cache))
    recipe = pick("recipe", recipe, PLAN.recipe(resolution))
    n_real = int((cache.part("train")[1] == 0).sum())
    batch_size = pick("batch_size", batch_size, min(budget.batch_size, max(n_real, 2)))
    n_scores = pick("scores", scores, budget.scores)
    width = pick("ngf", width, budget.width)
    config = recipe_config(recipe, resolution=resolution, batch_size=batch_size, ngf=width, ndf=width, seed=seed)
    # the probe sets a CPU run's length and its precision: not needed when both were asked
    needs_probe = device.type == "cpu" and (epochs is None or cpu_bf16 is not False)
    probe = gan_speed_probe(config) if needs_probe else {}
    bf16 = use_cpu_bf16(probe, resolution, cpu_bf16) if device.type == "cpu" else False
    if cpu_bf16 is None:
        auto.append("cpu_bf16")
    # seconds a sustained training step takes on this CPU (None off the CPU: no probe)
    per_step = PLAN.step_overhead * batch_size / probe["bf16" if bf16 else "fp32"] if probe else None
    default_epochs, epoch_steps = run_length(budget, per_step, max(1, n_real // batch_size), n_scores)
    if epochs is not None:  # asked: full passes
        epoch_steps = 0
    elif epoch_steps:
        auto.append("epoch_steps")
    rates = {k: v for k, v in (("lr_g", lr_g), ("lr_d", lr_d)) if v is not None}  # None: the recipe's
    config = replace(config, epochs=pick("epochs", epochs, default_epochs), epoch_steps=epoch_steps,
                     cpu_bf16=bf16, **rates)
    auto += ["ndf"] if "ngf" in auto else []
    n_test_real = int((cache.part("test")[1] == 0).sum())
    half_real = min(budget.fid_samples, max(2, n_real // 2))
    return GANPlan(
        recipe=recipe, config=config, device=str(device), n_real=n_real,
        fid_samples=pick("fid_samples", fid_samples, half_real if budget.fid_half_real else budget.fid_samples),
        score_every=max(1, math.ceil(config.epochs / max(1, n_scores))),
        save_every=max(1, config.epochs // 20),
        n_export=pick("n_export", n_export, n_test_real or n_real), auto=auto, cpu_speed_probe=probe)
