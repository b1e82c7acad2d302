"""The GAN's settings, each decided here once: :class:`GANConfig` (one run's hyper-parameters,
saved with the generator), its :data:`RECIPES` (named presets of it), and :data:`PLAN`, what
notebook 04 runs with where a parameter is left at None (:func:`helpers.gan.plan.plan_run`
resolves it for the data and the machine). The studies behind the numbers:
docs/gan-quality-study.md. Notebook 04 prints them from here rather than restating them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass
class GANConfig:
    """Hyper-parameters of a GAN run; the defaults are DCGAN's paper (see :data:`RECIPES`)."""

    resolution: int = 32  # 32 or 64
    nz: int = 100  # latent size
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width (DCGAN discriminator)
    generator: str = "dcgan"  # "dcgan" or "fastgan" (FastGAN's lite generator, :class:`FastGenerator`)
    discriminator: str = "dcgan"  # "dcgan" or "projected" (frozen Lite0 features, gan.projected)
    feature_size: int = 64  # projected: the side images are resized to before Lite0
    spectral_norm: bool = False  # spectral normalisation in D (replaces its batch norm)
    loss: str = "bce"  # "bce" (DCGAN's non-saturating loss) or "hinge"
    augment: str = ""  # DiffAugment policy, e.g. "color,translation,cutout" ("" = none)
    ema_decay: float = 0.0  # EMA of the generator's weights for sampling (0 = sample the raw one)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 128
    epochs: int = 25
    # steps per "epoch" (0 = a full pass): on a big dataset a full pass can outlast a CPU budget,
    # so an epoch becomes the first ``epoch_steps`` batches of a fresh shuffle
    epoch_steps: int = 0
    # bfloat16 autocast on a CPU with native bfloat16 (ignored elsewhere; CUDA always uses
    # mixed precision): 1.2-1.4x faster steps on an AVX512-BF16 EPYC (docs/gan-quality-study.md)
    cpu_bf16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.generator not in ("dcgan", "fastgan"):
            raise ValueError(f"generator must be 'dcgan' or 'fastgan', not {self.generator!r}")
        if self.discriminator not in ("dcgan", "projected"):
            raise ValueError(f"discriminator must be 'dcgan' or 'projected', not {self.discriminator!r}")
        if self.loss not in ("bce", "hinge"):
            raise ValueError(f"loss must be 'bce' or 'hinge', not {self.loss!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), not {self.ema_decay}")

    def steps_per_epoch(self, n_images: int) -> int:
        """Batches in an epoch over ``n_images``: a full pass without the ragged last batch
        (batch norm dislikes tiny ones), at most ``epoch_steps`` when that is set."""
        full = n_images // self.batch_size
        return min(full, self.epoch_steps) if self.epoch_steps else full

    @classmethod
    def from_dict(cls, values: dict) -> GANConfig:
        """Rebuild a config a checkpoint saved with ``asdict``: keys of older versions that are no
        longer fields are dropped, fields it lacks take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def changes(self) -> dict:
        """The fields that differ from the defaults (DCGAN's paper): what a recipe adds."""
        default = GANConfig()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


_DATA_EFFICIENT = dict(augment="color,translation,cutout", loss="hinge", ema_decay=0.999)
#: Named presets of :class:`GANConfig`. The study behind the default is docs/gan-quality-study.md.
RECIPES: dict[str, GANConfig] = {
    # the reference architecture, as published
    "dcgan": GANConfig(),
    # DCGAN's networks with the data-efficient training of Zhao et al. 2020 (DiffAugment), the
    # hinge loss on a spectrally normalised discriminator, and an EMA generator
    "diffaug": GANConfig(**_DATA_EFFICIENT, spectral_norm=True),
    # the same, judged by a projected discriminator on frozen Lite0 features (Sauer et al. 2021:
    # hinge loss, Adam betas (0, 0.99), lr 2e-4)
    "projected": GANConfig(**_DATA_EFFICIENT, discriminator="projected", beta1=0.0, beta2=0.99),
    # the paper's pairing: the projected discriminator with FastGAN's lite generator
    "fastgan": GANConfig(**_DATA_EFFICIENT, generator="fastgan", discriminator="projected",
                         beta1=0.0, beta2=0.99),
}


def recipe_config(recipe: str, **overrides) -> GANConfig:
    """The preset :data:`RECIPES` ``[recipe]`` with ``overrides``; an unknown recipe raises
    ValueError, a key that is not a :class:`GANConfig` field TypeError (never ignored)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown GAN recipe {recipe!r}; choose from {sorted(RECIPES)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(GANConfig)})
    if unknown:
        raise TypeError(f"GANConfig has no fields {unknown} (helpers/gan/config.py)")
    return replace(RECIPES[recipe], **overrides)


@dataclass(frozen=True)
class Budget:
    """What a kind of run (the demo, a CPU, an accelerator) takes for the parameters left at None."""

    batch_size: int  # at most the number of REAL training images
    width: int  # ngf = ndf
    scores: int  # KID scores during training, at even epochs (the last epoch's included)
    fid_samples: int  # generated images per score (and as many real ones, and as many for the floor)
    fid_half_real: bool  # fid_samples at most half the real images: a second set makes the floor
    seconds: float | None = None  # training time the length fits at this CPU's measured speed
    steps: int | None = None  # the length where no speed is measured (an accelerator)
    epochs: int | None = None  # the demo's epochs, fewer where they would take over `seconds`


@dataclass(frozen=True)
class PlanDefaults:
    """Notebook 04's automatic choices (:func:`helpers.gan.plan.plan_run`)."""

    #: the recipe with the most quality per CPU minute by resolution (KID after 5 training minutes
    #: on 2 cores, CIFAR-10 at 32 px and the shoes at 64 px); other resolutions: ``other_recipe``.
    #: The demo set's own fakes are DCGAN's (helpers/gan/demo.py), so fastgan is another
    #: architecture than those
    recipes: dict[int, str]
    other_recipe: str
    #: a sustained training step costs more than the probe's best of a few on a fixed batch (the
    #: batch's flip and scaling, the epoch's bookkeeping, a shared host's slower minutes): fastgan
    #: at 64 px, 1.04 s against 0.95 probed on an AVX-512 EPYC, 1.84 s against 1.42 on an AVX2 one
    step_overhead: float
    #: resolutions at which a CPU run takes bfloat16 autocast by default, where this CPU has it
    #: natively and the probe measures it at least precision_probe.BF16_MIN_SPEED_UP faster: 64 px, where the
    #: study measured 1.45x the steps in 5 minutes at the same KID per step. 32-px runs stay fp32
    #: unless asked (1.2x faster in a micro-benchmark; their quality under bfloat16 not measured)
    cpu_bf16_resolutions: tuple[int, ...]
    budgets: dict[str, Budget]

    def recipe(self, resolution: int) -> str:
        """The study's best recipe at ``resolution`` pixels."""
        return self.recipes.get(resolution, self.other_recipe)

    def budget(self, demo: bool, device_type: str) -> Budget:
        """The demo's budget on any device; else the CPU's, CUDA's or another accelerator's (MPS)."""
        return self.budgets["demo" if demo else device_type if device_type in ("cpu", "cuda") else "mps"]


PLAN = PlanDefaults(
    recipes={32: "fastgan", 64: "fastgan"}, other_recipe="dcgan", step_overhead=1.3,
    cpu_bf16_resolutions=(64,),
    budgets={
        # on any device (a GPU's demo once ran an accelerator's length and scored 5,000 images ten
        # times, tens of minutes where a CPU took four): `make all`'s 5-minute budget; on an
        # AVX2-only EPYC 6 epochs took 124 s of a 476-s `make all`, 60 s left it at 298 s
        "demo": Budget(batch_size=32, width=32, scores=1, fid_samples=64, fid_half_real=False,
                       seconds=45, epochs=6),
        # as many steps as fit these minutes at the speed the probe measures; scoring and export
        # come on top
        "cpu": Budget(batch_size=64, width=64, scores=8, fid_samples=500, fid_half_real=True,
                      seconds=13 * 60),
        # not measured here (no GPU was lent; see the study); features scored on the GPU
        "cuda": Budget(batch_size=64, width=64, scores=10, fid_samples=5_000, fid_half_real=False,
                       steps=20_000),
        "mps": Budget(batch_size=64, width=64, scores=8, fid_samples=500, fid_half_real=True,
                      steps=20_000),
    })
