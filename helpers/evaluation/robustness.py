"""Robustness: the test images JPEG-compressed, blurred, rescaled and cropped, and the
detector's accuracy on each; the severity curves (:func:`severity_grid`, :func:`severity_table`).

The same definitions as the training-time degradations of :mod:`helpers.training.degrade`
(sigma in pixels, rescale by a factor and back, crop a fraction of the side and resize back,
JPEG quality with 4:2:0 chroma); these are implemented with Pillow on numpy, those on tensors,
so a detector is never scored by the very code that augmented its training.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from sklearn import metrics as skm

from ..core.detector import Detector, is_robust, validation_rank
from ..core.images import fit_square
from ..core.stats import proportion_ci, ranking_ci
from .metrics import predicted_labels


@dataclass(frozen=True)
class Perturbation:
    """One post-processing applied to every test image (a Pillow function per image)."""

    name: str
    family: str
    parameter: float
    apply_one: Callable[[Image.Image], Image.Image] = field(repr=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return apply_pillow(images, self.apply_one)


def apply_pillow(images: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Apply ``fn`` (Pillow image -> Pillow image of the same size) to (N, H, W, 3) uint8."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    out = np.empty_like(images)
    for i, image in enumerate(images):
        result = fn(Image.fromarray(image, "RGB"))
        if result.size != (images.shape[2], images.shape[1]):
            raise ValueError(f"{fn} changed the image size to {result.size}")
        out[i] = np.asarray(result.convert("RGB"), dtype=np.uint8)
    return out


def _jpeg_one(quality: int) -> Callable[[Image.Image], Image.Image]:
    def compress(img: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)  # Pillow's default 4:2:0 subsampling
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")
    return compress


def _blur_one(sigma: float) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img.filter(ImageFilter.GaussianBlur(radius=sigma))


def _rescale_one(factor: float) -> Callable[[Image.Image], Image.Image]:
    def rescale(img: Image.Image) -> Image.Image:
        small = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        return (img.resize(small, Image.Resampling.BICUBIC)
                .resize(img.size, Image.Resampling.BICUBIC))
    return rescale


def _crop_one(fraction: float) -> Callable[[Image.Image], Image.Image]:
    def crop(img: Image.Image) -> Image.Image:
        w, h = max(1, round(img.width * fraction)), max(1, round(img.height * fraction))
        left, top = (img.width - w) // 2, (img.height - h) // 2
        return (img.crop((left, top, left + w, top + h))
                .resize(img.size, Image.Resampling.BICUBIC))
    return crop


def _chain_one(factor: float, quality: int) -> Callable[[Image.Image], Image.Image]:
    rescale_one, jpeg_one = _rescale_one(factor), _jpeg_one(quality)
    return lambda img: jpeg_one(rescale_one(img))


def jpeg_compress(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode every image as JPEG at ``quality`` (Pillow, 4:2:0 chroma) and decode it."""
    return apply_pillow(images, _jpeg_one(quality))


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (Pillow's ``GaussianBlur``,
    an extended-box approximation of the Gaussian)."""
    return apply_pillow(images, _blur_one(sigma))


def rescale(images: np.ndarray, factor: float) -> np.ndarray:
    """Downscale by ``factor`` and upscale back to the original size (bicubic, Pillow)."""
    return apply_pillow(images, _rescale_one(factor))


def centre_crop(images: np.ndarray, fraction: float) -> np.ndarray:
    """Cut the central ``fraction`` of each side and resize it back (bicubic, Pillow)."""
    return apply_pillow(images, _crop_one(fraction))


def perturbations(jpeg_qualities: Sequence[int] = (95, 75, 50),
                  blur_sigmas: Sequence[float] = (0.5, 1.0, 2.0),
                  rescale_factors: Sequence[float] = (0.5,),
                  crop_fractions: Sequence[float] = (0.75,)) -> list[Perturbation]:
    """The robustness protocol: JPEG q95/75/50, blur sigma 0.5/1/2, x0.5 rescale, 75 % crop."""
    return (
        [Perturbation(f"JPEG q{q}", "jpeg", q, _jpeg_one(q)) for q in jpeg_qualities]
        + [Perturbation(f"blur sigma {s:g}", "blur", s, _blur_one(s)) for s in blur_sigmas]
        + [Perturbation(f"rescale x{f:g}", "rescale", f, _rescale_one(f)) for f in rescale_factors]
        + [Perturbation(f"centre crop {f:.0%}", "crop", f, _crop_one(f)) for f in crop_fractions]
    )


def perturbed_sets(images: np.ndarray,
                   protocol: Sequence[Perturbation] | None = None) -> dict[str, tuple[Perturbation | None, np.ndarray]]:
    """``{"clean": (None, images), name: (perturbation, perturbed images), ...}``.

    Computed once per image size and shared by every model of that size.
    """
    protocol = perturbations() if protocol is None else protocol
    return {"clean": (None, images), **{p.name: (p, p(images)) for p in protocol}}


def high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels.

    A cheap measure of fine detail: blurring lowers it, JPEG at low quality usually too.
    """
    x = np.asarray(images, dtype=np.float64)
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


def robustness_table(detector: Detector, sets: dict[str, tuple[Perturbation | None, np.ndarray]],
                     labels: np.ndarray, device: str = "cpu", batch_size: int | None = None,
                     threshold: float | None = None, clean_p_fake: np.ndarray | None = None) -> pd.DataFrame:
    """Accuracy, AUC and per-class recall of ``detector`` on each set of :func:`perturbed_sets`.

    ``clean_p_fake`` (the predictions already made on the clean set) saves one pass.
    ``threshold`` None: the detector's own.
    """

    threshold = detector.threshold if threshold is None else threshold
    labels = np.asarray(labels).astype(np.int64)
    rows = []
    for name, (perturbation, images) in sets.items():
        if perturbation is None and clean_p_fake is not None:
            p_fake = np.asarray(clean_p_fake)
        else:
            p_fake = detector.predict_proba(images, device, batch_size)
        y_pred = predicted_labels(p_fake, threshold)
        rows.append({
            "model": detector.name, "condition": name, "n_images": int(labels.size),
            "family": perturbation.family if perturbation else "clean",
            "parameter": perturbation.parameter if perturbation else np.nan,
            "accuracy": skm.accuracy_score(labels, y_pred),
            "auc": skm.roc_auc_score(labels, p_fake) if np.unique(labels).size == 2 else np.nan,
            "fake_recall": skm.recall_score(labels, y_pred, pos_label=1, zero_division=0),
            "real_recall": skm.recall_score(labels, y_pred, pos_label=0, zero_division=0),
            "flagged_fake": float(y_pred.mean()),
        })
    table = pd.DataFrame(rows)
    clean = table.loc[table["condition"] == "clean"].iloc[0]
    table["accuracy_drop"] = clean["accuracy"] - table["accuracy"]
    table["auc_drop"] = clean["auc"] - table["auc"]
    return table


def resize_to(images: np.ndarray, size: int) -> np.ndarray:
    """Bring (N, H, W, 3) uint8 images to ``size`` x ``size`` with the project's rule
    (:func:`helpers.core.images.fit_square`); images already that size are returned untouched."""

    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(fit_square(Image.fromarray(im, "RGB"), size)) for im in images])


#: Severity grids of notebook 05's curves, per family: blur sigma (px), rescale factor, JPEG
#: quality, crop fraction of the side, and the upload chain "rescale xq/100 then JPEG q" (by q).
SEVERITIES: dict[str, tuple[float, ...]] = {
    "blur": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    "rescale": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    "jpeg": (10, 20, 30, 50, 75, 90, 100),
    "crop": (0.5, 0.6, 0.75, 0.9, 1.0),
    "rescale_jpeg": (30, 50, 75, 90, 100),
}

_MAKERS = {"blur": lambda s: _blur_one(s), "rescale": lambda f: _rescale_one(f),
           "jpeg": lambda q: _jpeg_one(int(q)), "crop": lambda f: _crop_one(f),
           "rescale_jpeg": lambda q: _chain_one(q / 100, int(q))}


def _identity(family: str, value: float) -> bool:
    return (family, value) in {("blur", 0.0), ("rescale", 1.0), ("crop", 1.0)}


def severity_grid(severities: dict[str, Sequence[float]] | None = None) -> list[Perturbation]:
    """One :class:`Perturbation` per (family, severity) of ``severities`` (default
    :data:`SEVERITIES`); zero severity (blur 0, x1, crop 100 %) is the identity."""
    out = []
    for family, values in (SEVERITIES if severities is None else severities).items():
        for v in values:
            fn = (lambda img: img) if _identity(family, v) else _MAKERS[family](v)
            out.append(Perturbation(f"{family} {v:g}", family, float(v), fn))
    return out


def severity_table(detectors: Sequence[Detector], images: np.ndarray, labels: np.ndarray,
                   grid: Sequence[Perturbation] | None = None, device: str = "cpu",
                   batch_size: int | None = None, n_bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """Accuracy and AUC with 95 % bootstrap intervals of each detector at each severity.

    ``images`` (N, H, W, 3) uint8 at the detectors' size, ``labels`` (N,) 0/1. Each
    perturbed set is made once and scored by every detector (at its own threshold).
    Intervals: :func:`helpers.core.stats.proportion_ci` (accuracy, percentile bootstrap) and
    :func:`helpers.core.stats.ranking_ci` (AUC, stratified), ``n_bootstrap`` resamples.
    Columns: model, family, parameter, accuracy, acc_low, acc_high, auc, auc_low, auc_high, n_images.
    """
    labels = np.asarray(labels).astype(np.int64)
    rows = []
    for p in severity_grid() if grid is None else grid:
        perturbed = p(images)
        for det in detectors:
            p_fake = det.predict_proba(perturbed, device, batch_size)
            acc = proportion_ci(predicted_labels(p_fake, det.threshold) == labels, n_bootstrap, seed=seed)
            auc = ranking_ci(labels, p_fake, "auc", n_bootstrap, seed=seed)
            rows.append({"model": det.name, "family": p.family, "parameter": p.parameter,
                         "accuracy": acc.estimate, "acc_low": acc.low, "acc_high": acc.high,
                         "auc": auc.estimate, "auc_low": auc.low, "auc_high": auc.high,
                         "n_images": int(labels.size)})
    return pd.DataFrame(rows)


def clean_and_robust(detectors: Sequence[Detector]) -> list[Detector]:
    """The detectors notebook 05's severity curves compare: the best clean one (trained
    without degradations) and the best robust one (with), each by validation accuracy
    (:func:`helpers.core.detector.validation_rank`); the robust one's image size decides
    when they differ. One or none of each may exist."""
    out = []
    for robust in (False, True):
        group = [d for d in detectors if is_robust(d.config) == robust]
        if group:
            out.append(max(group, key=lambda d: validation_rank(d.metrics or {})))
    size = out[-1].image_size if out else None
    return [d for d in out if d.image_size == size]


def worst_case(table: pd.DataFrame) -> pd.DataFrame:
    """Per model of a :func:`robustness_table`: clean accuracy, the worst accuracy over the
    perturbed conditions and the condition that gave it."""
    rows = []
    for model, part in table.groupby("model", sort=False):
        perturbed = part[part["condition"] != "clean"]
        worst = perturbed.loc[perturbed["accuracy"].idxmin()] if len(perturbed) else None
        rows.append({"model": model,
                     "clean_accuracy": float(part.loc[part["condition"] == "clean", "accuracy"].iloc[0]),
                     "worst_accuracy": float(worst["accuracy"]) if worst is not None else np.nan,
                     "worst_condition": worst["condition"] if worst is not None else None})
    return pd.DataFrame(rows)
