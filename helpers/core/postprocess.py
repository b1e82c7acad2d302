"""What happens to an image on its way to a user, as notebook 05's robustness protocol
applies it: JPEG re-encoding, Gaussian blur, rescaling and centre cropping (CNNDetection's
post-processing protocol, Wang et al., CVPR 2020, plus the rescale and crop that break this
project's detectors most), the severity grid of its curves, and the worst case under the
protocol that every checkpoint records on its validation split (:func:`validation_robustness`).

The same definitions as the training-time degradations of :mod:`helpers.training.degrade`
(sigma in pixels, rescale by a factor and back, crop a fraction of the side and resize back,
JPEG quality with 4:2:0 chroma); these are implemented with Pillow on numpy, those on tensors,
so a detector is never scored by the very code that augmented its training.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from .stats import stratified_subset

if TYPE_CHECKING:
    from .detector import Detector


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


def validation_robustness(detector: Detector, images: np.ndarray, labels: np.ndarray,
                          max_images: int | None = 2000, seed: int = 0, device=None) -> dict:
    """The protocol (:func:`perturbations`) on the VALIDATION split: the figure that chooses the
    detector ``predict`` and the app use (:func:`helpers.core.detector.best_path`).

    ``images``: uint8 (N, S, S, 3) at the detector's size; ``labels``: (N,) 0 REAL / 1 FAKE;
    at most ``max_images`` of them, a stratified seeded subsample (the one notebook 05 and
    ``benchmarks/robustness_study.py`` score). Returns a JSON-ready dict: ``split``,
    ``n_images``, ``clean_accuracy``, ``worst_accuracy`` (the lowest over the perturbed
    conditions, at the detector's own threshold, chosen on this same split: a little
    optimistic, equally for every detector) and ``worst_condition``.
    """
    labels = np.asarray(labels).astype(np.int64)
    keep = stratified_subset(labels, max_images, seed)
    accuracy = {name: float(np.mean((detector.predict_proba(x, device) >= detector.threshold) == labels[keep]))
                for name, (_, x) in perturbed_sets(np.asarray(images)[keep]).items()}
    clean = accuracy.pop("clean")
    worst = min(accuracy, key=accuracy.get)
    return {"split": "val", "n_images": int(keep.size), "clean_accuracy": clean,
            "worst_accuracy": accuracy[worst], "worst_condition": worst}
