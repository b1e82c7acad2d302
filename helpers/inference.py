"""Using a trained detector: load a checkpoint, score uint8 images, find the best checkpoint.

Shared by the training loop's validation, notebook 05 (evaluation), the ``predict`` CLI,
Grad-CAM and the web app, so that every consumer applies the same normalisation, the same
test-time flip and the same batching.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import paths
from .accel import autocast, images_to_device, to_float

#: Marks a file written by :func:`helpers.train.fit` (checked when loading).
CHECKPOINT_FORMAT = "aidetect-detector"
# What torch.load raises for a truncated or foreign file.
CORRUPT_CHECKPOINT = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile)
#: The decision threshold of checkpoints saved before thresholds were chosen on validation.
DEFAULT_THRESHOLD = 0.5
#: Keys of the ``info`` dict returned by :func:`load_detector`.
INFO_KEYS = ("model", "dataset", "image_size", "mean", "std", "metrics", "data_fingerprint",
             "config")


def _make_hint(path: Path) -> str:
    dataset = path.parent.parent.name if path.parent.name == "models" else "<dataset>"
    return f"`make train DATASET={dataset}` (or `python -m helpers.train --dataset {dataset}`)"


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``; return it in eval mode and its ``info``.

    ``info`` holds ``model``, ``dataset``, ``image_size``, ``mean``, ``std``, ``metrics``
    (validation), ``data_fingerprint`` and ``config`` (the training configuration), plus
    ``environment``, ``train_seconds`` (the whole run), ``epoch`` (the one saved),
    ``epochs_run``, ``path``, ``threshold`` (P(FAKE) at or above it means AI-generated; chosen
    on validation, :data:`DEFAULT_THRESHOLD` for older checkpoints) and ``threshold_source``.
    """
    from .models import build_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no detector checkpoint at {path}; make it with {_make_hint(path)}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except CORRUPT_CHECKPOINT as err:
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); delete it and "
                         f"retrain with {_make_hint(path)}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a detector checkpoint written by helpers.train "
                         f"(it may be a `.last.pt` resume file or another model); retrain with "
                         f"{_make_hint(path)}")
    device = torch.device(device)
    model = build_model(ckpt["model"], ckpt["image_size"], **ckpt.get("model_options", {}))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit model {ckpt['model']!r} of this code "
                         f"version ({str(err).splitlines()[0]}); retrain with {_make_hint(path)}") from err
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    info = {k: ckpt[k] for k in INFO_KEYS}
    # the whole run's time (older checkpoints: the time to their own epoch)
    seconds = ckpt.get("run_seconds", ckpt.get("train_seconds"))
    info.update(environment=ckpt.get("environment"), train_seconds=seconds,
                epoch=ckpt.get("epoch"), epochs_run=ckpt.get("epochs_run"), path=str(path),
                threshold=float(ckpt.get("threshold", DEFAULT_THRESHOLD)),
                threshold_source="validation" if "threshold" in ckpt else "default (older checkpoint)")
    return model, info


def choose_threshold(labels: np.ndarray, p_fake: np.ndarray) -> tuple[float, float]:
    """The decision threshold on P(FAKE) that maximises accuracy on ``labels`` (0/1), and that
    accuracy. An image is called FAKE when ``p_fake >= threshold``.

    Candidates are 0.5 and the midpoints between consecutive distinct probabilities; among
    equally accurate ones the closest to 0.5 wins, so a detector whose best cut already lies
    at 0.5 keeps it, and a wide gap between the classes puts the cut where 0.5 falls in it.
    ``labels`` and ``p_fake`` are (N,) arrays; raises ValueError when they are empty.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    p_fake = np.asarray(p_fake, dtype=np.float64).ravel()
    if len(labels) == 0 or len(labels) != len(p_fake):
        raise ValueError(f"need as many labels as probabilities (got {len(labels)} and {len(p_fake)})")
    values = np.unique(p_fake)
    candidates = np.unique(np.concatenate([[DEFAULT_THRESHOLD], (values[1:] + values[:-1]) / 2,
                                           [values[0], np.nextafter(values[-1], np.inf)]]))
    # accuracy at each candidate from sorted scores: FAKE called right at or above the cut,
    # REAL right below it
    order = np.sort(p_fake[labels == 1])
    real = np.sort(p_fake[labels == 0])
    fake_right = len(order) - np.searchsorted(order, candidates, side="left")
    real_right = np.searchsorted(real, candidates, side="left")
    accuracy = (fake_right + real_right) / len(labels)
    best = np.flatnonzero(accuracy == accuracy.max())
    pick = best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]
    return float(candidates[pick]), float(accuracy[pick])


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   batch_size: int = 512, tta: bool = False, amp: bool = True,
                   cpu_amp: bool = False) -> torch.Tensor:
    """Logits (N,) of a uint8 (N, 3, H, W) tensor already on the model's device.

    ``tta`` averages the logits of each image and its mirror image. ``amp`` runs the model in
    mixed precision on CUDA; ``cpu_amp`` in bfloat16 on CPUs that have it natively.
    """
    device = images.device
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size], mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, cpu=cpu_amp):
            logits = model(x).float().flatten()
            if tta:
                logits = (logits + model(x.flip(3)).float().flatten()) / 2
        out.append(logits)
    return torch.cat(out) if out else torch.zeros(0, device=device)


def predict_proba(model: nn.Module, info: dict, images: np.ndarray, device: str | torch.device = "cpu",
                  batch_size: int = 512, tta: bool = False) -> np.ndarray:
    """P(FAKE) for (N, H, W, 3) uint8 ``images`` (a single (H, W, 3) image is allowed).

    Images must be ``info['image_size']`` pixels square, decoded by the project's rule
    (:func:`helpers.images.decode`). ``model`` must already be on ``device``. A model trained
    with ``cpu_amp`` is scored in bfloat16 on CPUs that have it, as its validation was.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    size = info["image_size"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"expected uint8 images of shape (N, {size}, {size}, 3) for this detector, got "
            f"{images.dtype} {images.shape}; decode files with "
            f"helpers.images.decode(data, {size}) (or decode_file(path, {size})) first")
    device = torch.device(device)
    if len(images) == 0:
        return np.zeros(0, dtype=np.float64)
    mean = torch.tensor(info["mean"], device=device)
    std = torch.tensor(info["std"], device=device)
    cpu_amp = bool((info.get("config") or {}).get("cpu_amp"))  # score as it was trained
    was_training = model.training
    model.eval()
    probs = []
    try:
        # move a chunk at a time: the caller's array may be far larger than the device
        for start in range(0, len(images), batch_size * 8):
            chunk = images_to_device(images[start:start + batch_size * 8], device)
            logits = predict_logits(model, chunk, mean, std, batch_size, tta, cpu_amp=cpu_amp)
            probs.append(torch.sigmoid(logits).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(probs)


def checkpoints(dataset: str) -> list[Path]:
    """Detector checkpoints in ``results/<dataset>/models/`` (not resume files)."""
    folder = paths.RESULTS / dataset / "models"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.pt")
                  if not p.name.endswith(".last.pt") and not p.name.startswith("."))


def best_checkpoint(dataset: str) -> Path:
    """The checkpoint of ``dataset`` with the best validation accuracy (then lowest loss)."""
    found = []
    for path in checkpoints(dataset):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except CORRUPT_CHECKPOINT as err:  # not a candidate, but never skipped silently
            warnings.warn(f"{path}: skipped, corrupt or truncated checkpoint ({type(err).__name__}); "
                          f"delete it and retrain with {_make_hint(path)}", stacklevel=2)
            continue
        if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
            metrics = ckpt.get("metrics", {})
            found.append((metrics.get("val_acc", 0.0), -metrics.get("val_loss", np.inf),
                          path.stat().st_mtime, path))
    if not found:
        raise FileNotFoundError(
            f"no trained detector in {paths.RESULTS / dataset / 'models'}; run "
            f"`make train DATASET={dataset}` (or `python -m helpers.train --dataset {dataset}`)")
    return max(found)[-1]
