"""What a trained detector is: :class:`Detector`, the one owner of the checkpoint.

A detector is a network plus what it needs to be used the way it was validated: its input
size, the normalisation, the decision threshold chosen on validation, the data it was
trained on (fingerprint) and how it was trained. Training writes it, and everything else
(notebooks 05 and 06, ``predict``, the app) loads it here, so every consumer applies the same
normalisation, the same precision and the same threshold.

Precision: a detector is validated, its threshold chosen and it is scored in fp32 on every
device (:data:`helpers.core.accel.INFERENCE_DTYPE`), whatever precision it was trained in;
only a detector trained in bfloat16 on a CPU (``cpu_amp``) is validated and scored in bfloat16
on CPUs with native bfloat16 (:func:`helpers.core.accel.inference_autocast`).
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from . import paths
from .accel import images_to_device, inference_batch_size
from .domain import DomainCheck
from .models import build_model
from .repro import atomic_path
from .scoring import DEFAULT_THRESHOLD, predict_logits
from .selection import best_by_validation, is_robust, most_robust

T = TypeVar("T")

#: Marks a file written by :meth:`Detector.save` (checked when loading).
CHECKPOINT_FORMAT = "aidetect-detector"
# What torch.load raises for a truncated or foreign file.
CORRUPT_CHECKPOINT = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile)
#: Checkpoints in a ``models/`` folder that are not detectors: the GAN's (``gan.pt``, formerly ``dcgan.pt``).
NON_DETECTOR_PREFIXES = ("gan.", "dcgan")


def train_hint(dataset: str) -> str:
    """The command that trains a detector of ``dataset``."""
    return f"`make train DATASET={dataset}` (or `python -m helpers.training --dataset {dataset}`)"


def _hint(path: Path) -> str:
    return train_hint(path.parent.parent.name if path.parent.name == "models" else "<dataset>")


@dataclass
class Detector:
    """A trained detector and what was saved with it.

    ``threshold``: an image is called AI-generated when P(FAKE) >= it (chosen on validation by
    :func:`helpers.core.scoring.choose_threshold`). ``metrics``: the saved epoch's validation ``val_acc``,
    ``val_loss`` and ``epoch``. ``mean``/``std``: per-channel normalisation of pixels scaled to 0-1.
    """

    model: nn.Module
    architecture: str  # a name of helpers.core.models.MODELS
    dataset: str
    image_size: int  # pixels, square
    mean: list[float]
    std: list[float]
    config: dict  # the training configuration (helpers.training.config.TrainConfig as a dict)
    metrics: dict
    data_fingerprint: str
    model_options: dict = field(default_factory=dict)
    environment: dict | None = None
    epoch: int | None = None  # the saved (best) epoch
    seconds_to_epoch: float | None = None  # training time up to the saved epoch
    run_seconds: float | None = None  # the whole run, every epoch (known at its end)
    epochs_run: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    threshold_val_acc: float | None = None
    threshold_chosen: bool = True  # False: an older checkpoint without a saved threshold
    path: Path | None = None
    title: str | None = None  # how tables name it; None: the file's stem
    domain: DomainCheck | None = None  # None: an older checkpoint saved without a domain check
    # notebook 05's protocol on validation (helpers.core.postprocess.validation_robustness);
    # None: an older checkpoint
    robustness: dict | None = None

    @property
    def name(self) -> str:
        """``title``, else the file's stem (unique within a dataset), else the architecture."""
        return self.title or (self.path.stem if self.path else self.architecture)

    @property
    def train_seconds(self) -> float:
        """The whole run's training time (older checkpoints: the time to their epoch); NaN if unknown.

        Tables report this, not the time to the best epoch, which would flatter a run that
        peaked early but still trained (and cost) every epoch."""
        value = self.run_seconds if self.run_seconds is not None else self.seconds_to_epoch
        return float(value) if isinstance(value, (int, float)) else float("nan")

    @property
    def threshold_source(self) -> str:
        return "validation" if self.threshold_chosen else "default (older checkpoint)"

    @property
    def cpu_amp(self) -> bool:
        """Whether it was trained and validated in bfloat16 on the CPU (and is scored so)."""
        return bool(self.config.get("cpu_amp"))

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics.get("val_acc", float("nan")))

    @property
    def domain_status(self) -> str:
        """How the domain check stands, in words (an older checkpoint has none)."""
        if self.domain is None:
            return ("missing: this checkpoint was saved without a domain check (retrain it, or "
                    "add one with helpers.training.domain.add_domain_check)")
        return (f"{self.domain.features} k-NN distance, threshold chosen on validation so that "
                f"{self.domain.coverage:.0%} of in-domain images pass")

    def in_domain(self, images: np.ndarray, sides=None) -> tuple[np.ndarray, np.ndarray]:
        """``(score, in_domain)`` of uint8 (N, S, S, 3) model inputs, float64 and object (N,)
        arrays; ``sides``: the shorter side in px of each source file (None: unknown). Without a
        domain check (older checkpoints) the scores are NaN and ``in_domain`` None (unknown)."""
        images = self.check_images(images)
        if self.domain is None:
            return np.full(len(images), np.nan), np.full(len(images), None, dtype=object)
        if len(images) == 0:
            return np.zeros(0), np.zeros(0, dtype=object)
        score, inside = self.domain.check(images, sides)
        return score, inside.astype(object)

    # ------------------------------------------------------------------ files
    def checkpoint(self) -> dict[str, Any]:
        """The dict saved on disk (the weights on the CPU)."""
        ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "model": self.architecture,
                "model_options": self.model_options, "dataset": self.dataset,
                "image_size": self.image_size, "mean": self.mean, "std": self.std,
                "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
                "config": self.config, "metrics": self.metrics, "data_fingerprint": self.data_fingerprint,
                "environment": self.environment, "train_seconds": self.seconds_to_epoch,
                "epoch": self.epoch}
        if self.run_seconds is not None:
            ckpt.update(run_seconds=self.run_seconds, epochs_run=self.epochs_run)
        if self.threshold_chosen and self.threshold_val_acc is not None:
            ckpt.update(threshold=self.threshold, threshold_val_acc=self.threshold_val_acc)
        if self.domain is not None:
            ckpt["domain"] = self.domain.state()
        if self.robustness is not None:
            ckpt["robustness"] = self.robustness
        return ckpt

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (a reader never sees half a file)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.checkpoint(), tmp)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Detector:
        """Rebuild the detector saved at ``path``, its model in eval mode on ``device``.

        Raises FileNotFoundError when there is no file, ValueError (naming the file and the
        command that retrains it) when it is corrupt, not a detector, or of weights that do not
        fit this code's model.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no detector checkpoint at {path}; make it with {_hint(path)}")
        ckpt = _read(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a detector checkpoint written by helpers.training "
                             f"(it may be a `.last.pt` resume file or another model); retrain "
                             f"with {_hint(path)}")
        device = torch.device(device)
        model = build_model(ckpt["model"], ckpt["image_size"], **ckpt.get("model_options", {}))
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not fit model {ckpt['model']!r} of this code "
                             f"version ({str(err).splitlines()[0]}); retrain with {_hint(path)}") from err
        model.eval()
        return cls(model=model, architecture=ckpt["model"], dataset=ckpt["dataset"],
                   image_size=int(ckpt["image_size"]), mean=list(ckpt["mean"]), std=list(ckpt["std"]),
                   config=ckpt["config"], metrics=ckpt["metrics"], data_fingerprint=ckpt["data_fingerprint"],
                   model_options=ckpt.get("model_options", {}), environment=ckpt.get("environment"),
                   epoch=ckpt.get("epoch"), seconds_to_epoch=ckpt.get("train_seconds"),
                   run_seconds=ckpt.get("run_seconds"), epochs_run=ckpt.get("epochs_run"),
                   threshold=float(ckpt.get("threshold", DEFAULT_THRESHOLD)),
                   threshold_val_acc=ckpt.get("threshold_val_acc"),
                   threshold_chosen="threshold" in ckpt, path=path,
                   domain=DomainCheck.from_state(ckpt["domain"]) if ckpt.get("domain") else None,
                   robustness=ckpt.get("robustness")).to(device)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Detector:
        """Move the model to ``device`` (channels_last on CUDA) and return the detector; a no-op
        when it is there already."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.device != device:
            self.model.to(device)
            if device.type == "cuda":
                self.model.to(memory_format=torch.channels_last)
        return self

    # ------------------------------------------------------------------ use
    def decision_threshold(self, threshold: float | None = None) -> float:
        """``threshold`` if given (checked to lie in [0, 1]), else the detector's own."""
        if threshold is None:
            return self.threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        return float(threshold)

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """``images`` as (N, S, S, 3) uint8 at this detector's size S; ValueError otherwise."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        size = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected uint8 images of shape (N, {size}, {size}, 3) for this detector, got "
                f"{images.dtype} {images.shape}; decode files with "
                f"helpers.core.images.decode(data, {size}) (or decode_file(path, {size})) first")
        return images

    def predict_proba(self, images: np.ndarray, device: str | torch.device | None = None,
                      batch_size: int | None = None) -> np.ndarray:
        """P(FAKE), float64 (N,), for (N, H, W, 3) uint8 ``images`` (one (H, W, 3) image allowed).

        Images must be ``image_size`` pixels square, decoded by the project's rule
        (:func:`helpers.core.images.decode`). ``device`` None: where the model is; another device:
        the model moves there first and stays (:meth:`to`). ``batch_size`` None:
        :func:`helpers.core.accel.inference_batch_size` (64 on a CPU, 512 on a GPU). Scored in fp32
        on every device, as validation chose the threshold; a detector trained with ``cpu_amp`` in
        bfloat16 on CPUs that have it, as its validation was.
        """
        images = self.check_images(images)
        device = self.to(device).device if device is not None else self.device
        batch_size = inference_batch_size(device, batch_size)
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64)
        mean = torch.tensor(self.mean, device=device)
        std = torch.tensor(self.std, device=device)
        was_training = self.model.training
        self.model.eval()
        probs = []
        try:
            # move a chunk at a time: the caller's array may be far larger than the device
            for start in range(0, len(images), batch_size * 8):
                chunk = images_to_device(images[start:start + batch_size * 8], device)
                logits = predict_logits(self.model, chunk, mean, std, batch_size, cpu_amp=self.cpu_amp)
                probs.append(torch.sigmoid(logits).double().cpu().numpy())
        finally:
            self.model.train(was_training)
        return np.concatenate(probs)


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except CORRUPT_CHECKPOINT as err:
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); delete it and "
                         f"retrain with {_hint(path)}") from err


# --------------------------------------------------------------------------- a dataset's detectors

def detector_paths(dataset: str) -> list[Path]:
    """``results/<dataset>/models/*.pt`` that may be detectors: not resume files
    (``*.last.pt``), not hidden files, not the GAN's ``gan.pt`` (or older ``dcgan*.pt``)."""
    folder = paths.RESULTS / dataset / "models"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.pt")
                  if not p.name.endswith(".last.pt") and not p.name.startswith(".")
                  and not p.name.lower().startswith(NON_DETECTOR_PREFIXES))


def load_all(dataset: str, device: str = "cpu",
             names: Sequence[str] | None = None) -> tuple[list[Detector], list[tuple[str, str]]]:
    """Every detector of ``dataset``; returns ``(detectors, skipped)``.

    ``names`` restricts to those file stems. A file that :meth:`Detector.load` cannot read is
    listed in ``skipped`` as ``(file name, reason)``, not fatal.
    """
    detectors, skipped = [], []
    for path in detector_paths(dataset):
        if names is not None and path.stem not in names:
            continue
        try:
            detectors.append(Detector.load(path, device=device))
        except Exception as err:  # noqa: BLE001 - any unreadable or foreign checkpoint: report, go on
            skipped.append((path.name, f"not a detector checkpoint ({type(err).__name__}: {err})"))
    return detectors, skipped


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` reads as a detector checkpoint (False for corrupt or foreign files)."""
    try:
        ckpt = _read(Path(path))
    except ValueError:
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT


def best_path(dataset: str, robust: bool = True) -> Path:
    """The detector of ``dataset`` that ``predict`` and the app use by default.

    With ``robust``: :func:`helpers.core.selection.most_robust`, the best validation accuracy
    among those whose worst case over notebook 05's protocol, measured on validation, is within
    a noise margin of the best, as users' images have been resized, blurred, cropped and
    recompressed; checkpoints without that figure (older ones) only when none has it, and then
    those trained with degradations (:func:`is_robust`) first. Without ``robust``: the one :func:`best_by_validation` chooses.
    Ties and no validation figures: the newest. Never a choice on test figures.

    Raises FileNotFoundError, with the command that trains one, when there is none. A corrupt
    file is skipped with a warning, never silently.
    """
    found = []  # (path, metrics, trained robust, robustness), newest first: ties go to the newest
    for path in sorted(detector_paths(dataset), key=lambda p: (p.stat().st_mtime, p.name), reverse=True):
        try:
            ckpt = _read(path)
        except ValueError as err:  # not a candidate, but never skipped silently
            warnings.warn(f"{path}: skipped, corrupt or truncated checkpoint "
                          f"({type(err.__cause__).__name__}); delete it and retrain with {_hint(path)}",
                          stacklevel=2)
            continue
        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            found.append((path, ckpt.get("metrics") or {}, is_robust(ckpt.get("config")),
                          ckpt.get("robustness")))
    if not found:
        raise FileNotFoundError(
            f"no trained detector in {paths.RESULTS / dataset / 'models'}; run {train_hint(dataset)}")
    chosen = most_robust(found, lambda item: item[3], lambda item: item[1]) if robust else None
    if chosen is not None:
        return chosen[0]
    if robust:
        found = [item for item in found if item[2]] or found  # older checkpoints: the flag
    best = best_by_validation(found, lambda item: item[1])
    return (best or found[0])[0]  # none with validation figures: the newest, never one chosen on test


def overview(dataset: str) -> list[dict[str, Any]]:
    """One row per detector of ``dataset`` with what :func:`best_path` weighs: its validation
    accuracy, its training degradations, its worst case under notebook 05's protocol on
    validation (NaN when not measured) and whether it is the default of ``predict`` and the app."""
    detectors, _ = load_all(dataset)
    default = best_path(dataset) if detectors else None
    return [{"detector": d.name, "degradations": d.config.get("degrade") or "none",
             "validation accuracy": d.val_accuracy,
             "worst case on validation": (d.robustness or {}).get("worst_accuracy", float("nan")),
             "worst condition": (d.robustness or {}).get("worst_condition"),
             "default of predict": d.path == default} for d in detectors]


def resolve(dataset: str, model: str | Path | None = None) -> Path:
    """The checkpoint to use: ``model`` as a path or a name in ``results/<dataset>/models/``,
    or (None) the dataset's best detector."""
    if model is None:
        return best_path(dataset)
    candidate = Path(model)
    if candidate.suffix == ".pt" or candidate.exists():
        return candidate
    return paths.RESULTS / dataset / "models" / f"{model}.pt"
