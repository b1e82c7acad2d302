"""What decides a training run (:class:`TrainConfig`) and each dataset's measured default
(:data:`DEFAULTS`; the studies behind them are in ``docs/``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from ..core import models
from ..core.accel import pick_device
from ..data.datasets import get_spec


@dataclass
class RunSettings:
    """What decides a training run besides the model's options (:data:`TrainConfig` adds those)."""

    dataset: str = "demo"  # a name of helpers.data.datasets.DATASETS
    model: str = "fast"  # a name of helpers.core.models.MODELS
    image_size: int | None = None  # None: the cache's; must match the cache otherwise
    epochs: int = 10  # passes over the training split (the saved one is the best on validation)
    batch_size: int = 128  # global: split across processes under torchrun
    lr: float = 0.05  # peak learning rate of SGD with Nesterov momentum
    momentum: float = 0.9  # SGD momentum (Nesterov)
    weight_decay: float = 5e-4  # on conv/linear weights, not on biases and batch norm
    warmup: float = 0.2  # fraction of the steps warming up linearly; then linear decay to 0
    label_smoothing: float = 0.1  # targets 0/1 become ls/2 and 1 - ls/2
    flip: bool = True  # random horizontal mirror
    translate: int = 2  # random shift of up to this many pixels (reflected borders)
    cutout: int = 0  # side in pixels of a mid-grey square put at a random place in every
    # training image (Cutout); 0: off. It resamples nothing, so the other pixels keep their traces
    degrade: str = "none"  # training-time degradations: a recipe of helpers.training.degrade.RECIPES
    patience: int | None = None  # stop after this many epochs without a better validation
    seed: int = 0  # training seed (and the split seed unless --split-seed)
    device: str = "auto"  # auto: cuda, then mps, then cpu
    amp: bool = True  # mixed precision on CUDA: bfloat16 from sm_80, else float16 + GradScaler
    cpu_amp: bool | None = None  # bfloat16 autocast on the CPU; None: measured per machine and
    # model (precision_probe.choose_cpu_amp): 1.6x faster on one AVX512-BF16 CPU, slower on another
    channels_last: bool = True  # memory format of the model and batches
    compile: bool = False  # torch.compile the model (CUDA; slow to start)
    threads: int | None = None  # CPU threads (None: every core)
    eval_batch_size: int | None = None  # validation; None: accel.inference_batch_size (CPU 64, GPU 512)
    deterministic: bool | None = None  # None: CPU yes, CUDA and MPS no (accel.deterministic_by_default)

    @property
    def build_options(self) -> dict:
        """Keyword options of ``build_model`` this configuration sets (None and False left out);
        one the model does not declare is refused there, not dropped here."""
        values = {name: getattr(self, name) for name in models.option_types() if hasattr(self, name)}
        return {k: v for k, v in values.items() if v is not None and v is not False}

    @property
    def model_options(self) -> dict:
        """:attr:`build_options` but those choosing the starting weights (saved with checkpoints:
        what rebuilds the architecture)."""
        return {k: v for k, v in self.build_options.items() if k not in models.START_OPTIONS}

    @classmethod
    def from_dict(cls, values: dict):
        """The configuration a checkpoint saved (``asdict``): a field it lacks (saved before the
        field existed, e.g. ``local_width``) takes its default; a key no longer a field is dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def config_class(option_types: dict[str, type]) -> type:
    """:class:`RunSettings` plus one field per model option (``name -> type``): None (False for a
    flag) means the model's own default; its help is the registry's (``@register(help=...)``)."""
    def option_field(name: str, kind: type):
        default = False if kind is bool else None
        return (name, kind if kind is bool else kind | None,
                field(default=default, metadata={"help": models.option_help(name)}))

    return make_dataclass("TrainConfig", [option_field(n, k) for n, k in option_types.items()],
                          bases=(RunSettings,), namespace={"__module__": __name__, "__doc__": (
                              "Everything that decides a training run (saved in the checkpoint): "
                              "RunSettings' fields and one per model option of the registry.")})


#: Everything that decides a training run (saved in the checkpoint): :class:`RunSettings` plus
#: one field per option a registered model declares (``helpers.core.models``, its ``@register``:
#: ``width``, ``patch``, ``local_width``, ``input_size``, ``pretrained``, ...), so a new option is
#: settable here, on the command line and in notebook 03 (``MODEL_OPTIONS``) without being listed
#: again.
TrainConfig = config_class(models.option_types())


#: Per-dataset defaults, chosen on validation, never on test; anything not listed takes
#: TrainConfig's default. The studies behind them: docs/shoes-detector-study.md and
#: docs/cifake-detector-study.md.
DEFAULTS: dict[str, dict] = {
    # 3,200 32x32 images: `make all` must run in minutes on 2 CPU cores
    "demo": dict(model="fast", width=32, epochs=6, batch_size=128, lr=0.05),
    "sneakers": dict(model="two_scale", width=32, epochs=50, batch_size=64, lr=0.05, translate=8,
                     cutout=120),
    "cifake": dict(model="seed_cnn", epochs=40, batch_size=512, lr=0.1, translate=2),
}

#: The degradation recipe (helpers.training.degrade.RECIPES) of each dataset's ROBUST detector,
#: the second detector notebook 03 trains (the default's model and settings plus the recipe);
#: None: none is trained (the default already holds under notebook 05's protocol). Chosen on
#: validation by the rule of docs/robustness-study.md: among recipes within 0.5 pp of the best
#: clean accuracy the best worst case, else the best measured trade-off. ``predict`` and the app
#: take the detector with the best worst case measured on validation (core.detector.best_path).
ROBUST_DEGRADE: dict[str, str | None] = {
    "demo": "all",  # within 0.5 pp of the clean one's validation accuracy, the best worst case
    "cifake": "blur_rescale_crop_light",  # none within 0.5 pp; the best clean among those within 5 pp
    "sneakers": None,  # the clean two_scale loses at most 3.5 pp on validation; cnndet, brc bought nothing
}

#: On a CUDA GPU the dataset's default trains longer: the same recipe, as far as the CPU studies
#: could take it (CIFAKE's validation accuracy still rose at the CPU run's 40th epoch; the shoes'
#: at its 50th). UNMEASURED: no GPU has been lent to this project yet; benchmarks/gpu_check.py
#: times the CIFAKE epoch and trains the demo there. The demo keeps its CPU length on every device.
ACCELERATOR_DEFAULTS: dict[str, dict] = {
    "cifake": dict(epochs=100),
    "sneakers": dict(epochs=150),
}

#: The settings of the other models on a dataset, used when one is asked for by name (``make
#: reference-models``, notebook 03's MODEL): a model asked for by name takes TrainConfig's
#: defaults, the dataset's image size and its entry here, nothing of the dataset's default
#: model (before, it silently took that model's epochs, batch size, rate and augmentation).
#: The entries are the settings the committed results were trained with, so those stay
#: reproducible; on CIFAKE ``fast`` is the previous default, the paper's CNN and ResNet-18 the
#: published baselines, trained with it.
MODEL_SETTINGS: dict[str, dict[str, dict]] = {
    "demo": {"lite0_probe": dict(epochs=6), "lite0": dict(epochs=6)},
    "cifake": {"fast": dict(width=64, patch=2, epochs=40, batch_size=512, lr=0.1),
               "cifake_paper": dict(epochs=40, batch_size=512, lr=0.1),
               "resnet18": dict(epochs=40, batch_size=512, lr=0.1),
               # fine-tuning ImageNet weights: lr 0.05 wrecked them in a pilot, 0.01 kept them
               # (docs/pretrained-detectors-study.md)
               "lite0": dict(epochs=4, batch_size=128, lr=0.01),
               "lite0_probe": dict(epochs=40, batch_size=128, lr=0.1)},
    # 240-px shoes reach Lite0 at 128 px (antialiased): 4x cheaper than native on the CPU
    "sneakers": {"lite0": dict(epochs=15, batch_size=32, lr=0.01, input_size=128, translate=8, cutout=120),
                 "lite0_probe": dict(epochs=50, batch_size=64, translate=8, cutout=120)},
}


def default_config(dataset: str, **overrides) -> TrainConfig:
    """The measured default configuration of ``dataset``; ``None`` overrides are ignored.

    On a CUDA device (``device``, or ``auto`` finding one) the default model takes
    :data:`ACCELERATOR_DEFAULTS`. Another model than the default takes TrainConfig's defaults,
    the dataset's image size and its own :data:`MODEL_SETTINGS` on the dataset, if any; nothing
    of the default model's. Raises TypeError for a field TrainConfig does not have.
    """
    spec = get_spec(dataset)
    settings = {"image_size": spec.image_size, **DEFAULTS.get(dataset, {})}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown TrainConfig fields {sorted(unknown)}")
    model = overrides.get("model", settings.get("model"))
    if model == settings.get("model") and pick_device(overrides.get("device", "auto")).type == "cuda":
        settings.update(ACCELERATOR_DEFAULTS.get(dataset, {}))
    if model != settings.get("model"):
        settings = {"image_size": spec.image_size, **MODEL_SETTINGS.get(dataset, {}).get(model, {})}
    return TrainConfig(dataset=dataset, **{**settings, **overrides})


def field_help() -> dict[str, str]:
    """Each TrainConfig field's help, so the command line (and any other generated form) says
    what the code says: a model option's is the registry's (``@register(help=...)``); any other
    field's is its comment in :class:`RunSettings`' body (the trailing comment and the comment
    lines under it). Fields without either get ``""``."""
    helps: dict[str, str] = {}
    current = None
    for line in inspect.getsource(RunSettings).splitlines():
        code, _, comment = line.strip().partition("#")
        name = code.split(":", 1)[0].strip() if ":" in code and "=" in code else None
        if name and name.isidentifier():
            current, helps[current] = name, comment.strip()
        elif current and not code and comment:
            helps[current] += " " + comment.strip()
        else:
            current = None if code else current
    return {f.name: f.metadata.get("help") or helps.get(f.name, "") for f in fields(TrainConfig)}


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    model: nn.Module  # the best model (by validation), in eval mode
    history: pd.DataFrame  # one row per epoch
    metrics: dict  # best validation metrics: val_acc, val_loss, epoch
    checkpoint: Path  # results/<dataset>/models/<model>.pt
    seconds: float  # training wall time (all epochs, validation included)
    images_per_s: float  # training images per second (training steps only)
    config: TrainConfig
    resumed_epochs: int = 0  # epochs taken from a `.last.pt` instead of trained in this call
