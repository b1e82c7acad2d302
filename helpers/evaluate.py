"""Honest evaluation of trained detectors on the test split (notebook 05).

Everything here is measured on ``cache.part("test")`` only: images never used for training
or for model selection. Each detector decides at its own threshold on P(FAKE), chosen on the
validation split when it was trained and saved with it (:func:`helpers.inference.choose_threshold`),
and stated with every result; it is never tuned on the test set.

* Metrics come from scikit-learn (accuracy, ROC AUC, average precision, F1, log loss,
  classification report, confusion matrix, calibration curve). Two things it lacks are
  short functions here: the expected calibration error (:func:`expected_calibration_error`)
  and bootstrap confidence intervals (:func:`proportion_ci`, :func:`difference_ci`, both on
  :func:`scipy.stats.bootstrap` with a fixed seed).
* Robustness follows the spirit of CNNDetection (Wang et al., CVPR 2020): the test images
  are re-compressed as JPEG, blurred, down- and up-scaled or centre-cropped (all with
  Pillow) and the detector is scored again (:func:`perturbations`, :func:`robustness_table`).
* Cross-generator: how often the detector flags images of a generator it never saw, the
  GAN of notebook 04, next to its rate on the dataset's own fakes (:func:`cross_generator`).
* Content shortcut: the detector's accuracy on the test images whose colours alone mislead
  a colour-only classifier (:func:`colour_check`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from . import paths
from .data import CLASS_NAMES
from .inference import DEFAULT_THRESHOLD
from .repro import atomic_path, environment_fingerprint, write_csv, write_json

#: Decision threshold on P(FAKE) where none other is given (an image is called AI-generated
#: when ``p_fake >= THRESHOLD``); a detector's own, chosen on validation, takes precedence.
THRESHOLD = DEFAULT_THRESHOLD
#: Equal-width bins of the reliability diagram and of the expected calibration error.
CALIBRATION_BINS = 10
#: Checkpoints in ``results/<dataset>/models/`` that are not detectors (the GAN of notebook 04).
NON_DETECTOR_PREFIXES = ("dcgan",)


# --------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and how the interval was obtained."""

    estimate: float
    low: float
    high: float
    method: str
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return (f"{self.estimate:.2%} [{self.low:.2%}, {self.high:.2%}] "
                f"({self.confidence:.0%} CI, n={self.n})")


def _as_binary(values, name: str = "values") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"{name}: empty, nothing to estimate")
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{name}: expected 0/1 outcomes (e.g. correct or flagged)")
    return values


def _mean_statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return samples[0].mean(axis=axis)


def _difference_statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return a.mean(axis=axis) - b.mean(axis=axis)


def proportion_ci(outcomes, n_resamples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """Proportion of 1s in ``outcomes`` (0/1) with a percentile bootstrap interval.

    Uses :func:`scipy.stats.bootstrap` (``method="percentile"``, the generator seeded with
    ``seed``, so the interval is the same on every run). The percentile method is used
    rather than BCa because BCa's jackknife grows with n squared (13 s at n = 20,000) and
    gives nothing for a mean of 0/1 outcomes that the percentile interval misses.

    When every outcome is equal (e.g. 100 % accuracy) the bootstrap distribution is a single
    point and its interval [1, 1] would claim certainty; the exact Clopper-Pearson interval
    (:meth:`scipy.stats.binomtest(...).proportion_ci`) is returned instead, and ``method``
    says so.
    """
    values = _as_binary(outcomes, "outcomes")
    n, estimate = values.size, float(values.mean())
    if values.min() == values.max():
        k = int(values.sum())
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
        return Interval(estimate, float(ci.low), float(ci.high),
                        "Clopper-Pearson exact (bootstrap degenerate: all outcomes equal)", n,
                        confidence)
    result = stats.bootstrap((values,), _mean_statistic, n_resamples=n_resamples,
                             confidence_level=confidence, method="percentile",
                             vectorized=True, random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), "percentile bootstrap", n, confidence)


def difference_ci(a, b, n_resamples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """Difference of the proportions of 1s, ``mean(a) - mean(b)``, for two independent samples.

    Each sample is resampled on its own (``paired=False``), seeded with ``seed``. When both
    samples are constant the bootstrap cannot say anything and the bounds are NaN.
    """
    a, b = _as_binary(a, "a"), _as_binary(b, "b")
    estimate = float(a.mean() - b.mean())
    if a.min() == a.max() and b.min() == b.max():
        return Interval(estimate, float("nan"), float("nan"),
                        "undefined (both samples constant)", a.size + b.size, confidence)
    result = stats.bootstrap((a, b), _difference_statistic, n_resamples=n_resamples,
                             confidence_level=confidence, method="percentile", paired=False,
                             vectorized=True, random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), "percentile bootstrap",
                    a.size + b.size, confidence)


# --------------------------------------------------------------------------- metrics

def predicted_labels(p_fake, threshold: float = THRESHOLD) -> np.ndarray:
    """0 (REAL) / 1 (FAKE) decisions: FAKE when ``p_fake >= threshold``."""
    return (np.asarray(p_fake) >= threshold).astype(np.int64)


def expected_calibration_error(y_true, p_fake, n_bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error of P(FAKE), in the bins of the reliability diagram.

    scikit-learn has no ECE. This is the weighted mean gap between the two curves of
    :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``):

        ECE = sum over non-empty bins b of  (n_b / N) * |fraction of FAKE in b - mean P(FAKE) in b|

    with ``n_bins`` equal-width bins on [0, 1], assigned exactly as scikit-learn assigns them.
    0 means perfectly calibrated; a detector that says 0.99 and is right 90 % of the time
    has ECE of about 0.09.
    """
    y_true = np.asarray(y_true).ravel()
    p_fake = np.asarray(p_fake, dtype=np.float64).ravel()
    frac_fake, mean_p = calibration_curve(y_true, p_fake, n_bins=n_bins, strategy="uniform",
                                          pos_label=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p_fake), minlength=n_bins)
    weights = counts[counts > 0] / p_fake.size
    return float(np.sum(weights * np.abs(frac_fake - mean_p)))


def classification_metrics(y_true, p_fake, threshold: float = THRESHOLD,
                           n_bootstrap: int = 1000, seed: int = 0,
                           confidence: float = 0.95) -> dict[str, Any]:
    """The headline numbers of one detector on one labelled set (FAKE = positive class)."""
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    p_fake = np.asarray(p_fake, dtype=np.float64).ravel()
    if y_true.shape != p_fake.shape:
        raise ValueError(f"{y_true.size} labels but {p_fake.size} probabilities")
    y_pred = predicted_labels(p_fake, threshold)
    accuracy = proportion_ci(y_pred == y_true, n_bootstrap, confidence, seed)
    both = np.unique(y_true).size == 2
    return {
        "accuracy": accuracy.estimate, "ci_low": accuracy.low, "ci_high": accuracy.high,
        "ci_method": accuracy.method, "ci_level": confidence,
        "auc": skm.roc_auc_score(y_true, p_fake) if both else float("nan"),
        "average_precision": skm.average_precision_score(y_true, p_fake) if both else float("nan"),
        "f1": skm.f1_score(y_true, y_pred, pos_label=1, zero_division=0),
        "precision": skm.precision_score(y_true, y_pred, pos_label=1, zero_division=0),
        "recall": skm.recall_score(y_true, y_pred, pos_label=1, zero_division=0),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred) if both else float("nan"),
        "ece": expected_calibration_error(y_true, p_fake),
        "brier": skm.brier_score_loss(y_true, p_fake, pos_label=1),
        "test_loss": skm.log_loss(y_true, p_fake, labels=[0, 1]),
        "n_test": int(y_true.size), "n_real": int((y_true == 0).sum()),
        "n_fake": int((y_true == 1).sum()), "n_errors": int((y_pred != y_true).sum()),
        "threshold": threshold,
    }


def classification_table(y_true, p_fake, threshold: float = THRESHOLD) -> pd.DataFrame:
    """scikit-learn's classification report as a table: precision, recall, F1, support per
    class, accuracy, macro and weighted averages."""
    report = skm.classification_report(np.asarray(y_true).astype(np.int64),
                                       predicted_labels(p_fake, threshold), labels=[0, 1],
                                       target_names=list(CLASS_NAMES), output_dict=True,
                                       zero_division=0)
    accuracy = report.pop("accuracy", None)
    table = pd.DataFrame(report).T
    if accuracy is not None:
        table.loc["accuracy"] = [np.nan, np.nan, accuracy, table.loc["macro avg", "support"]]
    table["support"] = table["support"].astype(int)
    return table.loc[[*CLASS_NAMES, "accuracy", "macro avg", "weighted avg"]]


def confusion_tables(y_true, p_fake, threshold: float = THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Confusion matrix as counts and normalised by the true class (rows sum to 1)."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = predicted_labels(p_fake, threshold)
    index = pd.Index([f"true {c}" for c in CLASS_NAMES])
    columns = pd.Index([f"predicted {c}" for c in CLASS_NAMES])
    counts = skm.confusion_matrix(y_true, y_pred, labels=[0, 1])
    normalised = skm.confusion_matrix(y_true, y_pred, labels=[0, 1], normalize="true")
    return (pd.DataFrame(counts, index=index, columns=columns),
            pd.DataFrame(np.nan_to_num(normalised), index=index, columns=columns))


def confident_mistakes(y_true, p_fake, files: Sequence[str], k: int = 12,
                       threshold: float = THRESHOLD) -> pd.DataFrame:
    """The ``k`` misclassified images the detector was most sure about, most confident first.

    Columns: ``index`` (position in the evaluated set), ``file``, ``true``, ``predicted``,
    ``p_fake`` and ``confidence`` (the probability given to the wrong class).
    """
    y_true = np.asarray(y_true).astype(np.int64)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    y_pred = predicted_labels(p_fake, threshold)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = np.where(y_pred[wrong] == 1, p_fake[wrong], 1.0 - p_fake[wrong])
    order = wrong[np.argsort(-confidence, kind="stable")][:k]
    conf = np.where(y_pred[order] == 1, p_fake[order], 1.0 - p_fake[order])
    return pd.DataFrame({
        "index": order, "file": np.asarray(files)[order] if len(order) else [],
        "true": [CLASS_NAMES[c] for c in y_true[order]],
        "predicted": [CLASS_NAMES[c] for c in y_pred[order]],
        "p_fake": p_fake[order], "confidence": conf,
    })


# --------------------------------------------------------------------------- robustness

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


def stratified_subset(labels, max_images: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_images`` items with the class proportions of ``labels``
    (seeded, sorted); all indices when ``max_images`` is None or not smaller than the set."""
    labels = np.asarray(labels)
    if max_images is None or max_images >= labels.size:
        return np.arange(labels.size)
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(np.arange(labels.size), train_size=max_images, random_state=seed,
                                 stratify=labels)
    return np.sort(chosen)


def high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels.

    A cheap measure of fine detail: blurring lowers it, JPEG at low quality usually too.
    """
    x = np.asarray(images, dtype=np.float64)
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


# --------------------------------------------------------------------------- detectors

@dataclass
class Detector:
    """A loaded detector checkpoint: ``name`` is the file's stem (unique per dataset)."""

    name: str
    path: Path
    model: Any
    info: dict

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def threshold(self) -> float:
        """P(FAKE) at or above which it calls an image AI-generated (saved with it)."""
        return float(self.info.get("threshold", DEFAULT_THRESHOLD))


def detector_checkpoints(dataset: str) -> list[Path]:
    """``results/<dataset>/models/*.pt`` that may be detectors: not resume files
    (``*.last.pt``, see :func:`helpers.inference.checkpoints`), not the GAN's ``dcgan*.pt``."""
    from .inference import checkpoints

    return [p for p in checkpoints(dataset) if not p.name.lower().startswith(NON_DETECTOR_PREFIXES)]


def load_detectors(dataset: str, device: str = "cpu",
                   names: Sequence[str] | None = None) -> tuple[list[Detector], list[tuple[str, str]]]:
    """Load every detector checkpoint of ``dataset``; returns ``(detectors, skipped)``.

    ``names`` restricts to those file stems. A file that :func:`helpers.inference.load_detector`
    cannot read as a detector is listed in ``skipped`` with the reason, not fatal.
    """
    from .inference import load_detector

    detectors, skipped = [], []
    for path in detector_checkpoints(dataset):
        if names is not None and path.stem not in names:
            continue
        try:
            model, info = load_detector(path, device=device)
        except Exception as err:  # noqa: BLE001 - any unreadable or foreign checkpoint: report, go on
            skipped.append((path.name, f"not a detector checkpoint ({type(err).__name__}: {err})"))
            continue
        detectors.append(Detector(path.stem, path, model, info))
    return detectors, skipped


def fingerprint_problem(detector: Detector, cache) -> str | None:
    """Why ``detector`` must not be scored on ``cache``'s test split, or None if it may.

    The checkpoint records the fingerprint of the data it was trained on (images, labels and
    split). A different fingerprint means a different split, so today's test images may have
    been its training images.
    """
    recorded = detector.info.get("data_fingerprint")
    if detector.image_size != int(cache.images.shape[1]):
        return (f"trained at {detector.image_size}px, the cache is {cache.images.shape[1]}px "
                f"(prepare the cache at IMAGE_SIZE={detector.image_size})")
    if recorded and recorded != cache.fingerprint:
        return (f"trained on other data (fingerprint {recorded}, this cache {cache.fingerprint}): "
                "its training images may be in this test split. Retrain it (make train) or use "
                "the DATA_SOURCE and SEED it was trained with")
    return None


def match_caches(detectors: Sequence[Detector], cache,
                 prepare_at: Callable[[int], Any]) -> tuple[list[tuple[Detector, Any]], list[tuple[str, str]]]:
    """Pair every detector with the cache of its input size; drop those trained on other data.

    ``prepare_at(size)`` returns the dataset's cache at ``size`` pixels (e.g.
    ``lambda s: data.prepare(DATASET, DATA_SOURCE, s, SEED)``); it is called only for sizes
    other than ``cache``'s. Returns ``(usable pairs, skipped (name, reason))``.
    """
    caches = {int(cache.images.shape[1]): cache}
    usable, skipped = [], []
    for detector in detectors:
        if detector.image_size not in caches:
            caches[detector.image_size] = prepare_at(detector.image_size)
        problem = fingerprint_problem(detector, caches[detector.image_size])
        if problem:
            skipped.append((detector.name, problem))
        else:
            usable.append((detector, caches[detector.image_size]))
    return usable, skipped


def _count_parameters(model) -> int:
    from .models import count_parameters

    return int(count_parameters(model))


def _display_path(path: Path) -> str:
    """``path`` relative to the project root when it lies inside it (portable results)."""
    try:
        return Path(path).resolve().relative_to(paths.ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)


def _train_seconds(info: dict) -> float:
    value = info.get("train_seconds")
    return float(value) if isinstance(value, (int, float)) else float("nan")


@dataclass
class ModelResult:
    """One detector's predictions on the test split and everything computed from them."""

    detector: Detector
    y_true: np.ndarray
    p_fake: np.ndarray
    files: np.ndarray
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def threshold(self) -> float:
        """The decision threshold these metrics were computed at."""
        return float(self.metrics["threshold"])


def evaluate_detector(detector: Detector, images: np.ndarray, labels: np.ndarray,
                      files: Sequence[str], device: str = "cpu", batch_size: int = 512,
                      threshold: float | None = None, n_bootstrap: int = 1000,
                      seed: int = 0) -> ModelResult:
    """Predict ``images`` (the test split) and compute :func:`classification_metrics` plus the
    detector's size, training time and inference speed.

    The speed is that of this very pass of :func:`helpers.inference.predict_proba` over the
    test images (after a one-batch warm-up), decoding excluded; ``benchmarks/bench_inference.py``
    measures it more carefully. ``threshold`` None: the detector's own (chosen on validation).
    """
    from .inference import predict_proba

    predict_proba(detector.model, detector.info, images[:batch_size], device=device,
                  batch_size=batch_size)  # warm-up: one-time allocations, kernel selection
    start = time.perf_counter()
    p_fake = np.asarray(predict_proba(detector.model, detector.info, images, device=device,
                                      batch_size=batch_size), dtype=np.float64)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"model": detector.name, "architecture": detector.info.get("model")}
    threshold = detector.threshold if threshold is None else threshold
    row.update(classification_metrics(labels, p_fake, threshold, n_bootstrap, seed))
    row.update(
        params=_count_parameters(detector.model),
        train_seconds=_train_seconds(detector.info),
        val_accuracy=(detector.info.get("metrics") or {}).get("val_acc", float("nan")),
        inference_images_per_s=len(images) / seconds if seconds > 0 else float("nan"),
        image_size=detector.image_size, checkpoint=_display_path(detector.path),
        trained_on=detector.info.get("data_fingerprint"),
    )
    return ModelResult(detector, np.asarray(labels).astype(np.int64), p_fake,
                       np.asarray(files), row)


def metrics_frame(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per model: the columns of ``performance_metrics.csv``."""
    return pd.DataFrame([r.metrics for r in results])


def comparison_table(results: Sequence[ModelResult]) -> pd.DataFrame:
    """The side-by-side table of several models (readable units)."""
    frame = metrics_frame(results)
    return pd.DataFrame({
        "model": frame["model"],
        "accuracy": frame["accuracy"].map("{:.2%}".format),
        "95% CI": [f"[{lo:.2%}, {hi:.2%}]" for lo, hi in zip(frame["ci_low"], frame["ci_high"])],
        "AUC": frame["auc"].round(4), "ECE": frame["ece"].round(4),
        "parameters": frame["params"], "train s": frame["train_seconds"].round(1),
        "inference img/s": frame["inference_images_per_s"].round(0),
    }).set_index("model")


def robustness_table(detector: Detector, sets: dict[str, tuple[Perturbation | None, np.ndarray]],
                     labels: np.ndarray, device: str = "cpu", batch_size: int = 512,
                     threshold: float | None = None, clean_p_fake: np.ndarray | None = None) -> pd.DataFrame:
    """Accuracy, AUC and per-class recall of ``detector`` on each set of :func:`perturbed_sets`.

    ``clean_p_fake`` (the predictions already made on the clean set) saves one pass.
    ``threshold`` None: the detector's own.
    """
    from .inference import predict_proba

    threshold = detector.threshold if threshold is None else threshold
    labels = np.asarray(labels).astype(np.int64)
    rows = []
    for name, (perturbation, images) in sets.items():
        if perturbation is None and clean_p_fake is not None:
            p_fake = np.asarray(clean_p_fake)
        else:
            p_fake = predict_proba(detector.model, detector.info, images, device=device,
                                   batch_size=batch_size)
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


def describe_robustness(table: pd.DataFrame) -> str:
    """A sentence per model naming its most damaging perturbation (from the numbers)."""
    lines = []
    for model, part in table.groupby("model", sort=False):
        clean = part.loc[part["condition"] == "clean", "accuracy"].iloc[0]
        worst = part.loc[part["condition"] != "clean"].sort_values("accuracy").iloc[0]
        skew = ""
        if worst["flagged_fake"] > 0.9:
            skew = f"; it then calls {worst['flagged_fake']:.0%} of all images AI-generated"
        elif worst["flagged_fake"] < 0.1:
            skew = f"; it then calls {1 - worst['flagged_fake']:.0%} of all images real"
        lines.append(f"{model}: clean accuracy {clean:.1%}; worst under {worst['condition']} "
                     f"({worst['accuracy']:.1%}, AUC {worst['auc']:.3f}){skew}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- cross-generator

def resize_to(images: np.ndarray, size: int) -> np.ndarray:
    """Bring (N, H, W, 3) uint8 images to ``size`` x ``size`` with the project's rule
    (:func:`helpers.images.fit_square`); images already that size are returned untouched."""
    from .images import fit_square

    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(fit_square(Image.fromarray(im, "RGB"), size)) for im in images])


def cross_generator(result: ModelResult, gan_images: np.ndarray, gan_resolution: int | None = None,
                    device: str = "cpu", batch_size: int = 512, threshold: float | None = None,
                    n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Rate at which a detector flags an unseen generator's images as AI-generated.

    Compared with its rate on the test split's own fakes (its recall) and on the test split's
    real photos (its false-positive rate), from ``result`` (:func:`evaluate_detector`), each
    with a bootstrap interval, and the difference unseen - own with an interval from
    resampling both sets independently.

    ``gan_images`` should already be at the detector's input size, decoded by the project's
    rule (``helpers.gan.load_exported(dataset, size)``); other sizes are brought to it with
    :func:`resize_to`. ``gan_resolution`` is the GAN's own output size, for the record.
    """
    from .inference import predict_proba

    detector = result.detector
    threshold = result.threshold if threshold is None else threshold
    gan_images = np.asarray(gan_images)
    gan = resize_to(gan_images, detector.image_size)
    flag_gan = predicted_labels(predict_proba(detector.model, detector.info, gan, device=device,
                                              batch_size=batch_size), threshold)
    flag_test = predicted_labels(result.p_fake, threshold)
    own, real = flag_test[result.y_true == 1], flag_test[result.y_true == 0]
    return {
        "model": detector.name, "n_gan": int(gan.shape[0]),
        "gan_resolution": int(gan_resolution or gan_images.shape[1]),
        "resized": int(gan_resolution or gan_images.shape[1]) != detector.image_size,
        "gan_flag_rate": proportion_ci(flag_gan, n_bootstrap, seed=seed),
        "own_fake_flag_rate": proportion_ci(own, n_bootstrap, seed=seed),
        "real_flag_rate": proportion_ci(real, n_bootstrap, seed=seed),
        "difference": difference_ci(flag_gan, own, n_bootstrap, seed=seed),
    }


def colour_check(result: ModelResult, colour_p_fake, threshold: float | None = None,
                 n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The detector's test accuracy where colour alone points the right way and where it
    points the wrong way, next to the colour-only baseline's own accuracy
    (:func:`helpers.explore.colour_baseline`; ``colour_p_fake`` is its P(FAKE) on the same
    test images). A detector that reads how images were made stays accurate on the images
    whose colours mislead; one that learned the classes' colours falls to the baseline there.
    One row per subset, with bootstrap intervals; an empty subset gets NaN. The baseline
    decides at 0.5; the detector at ``threshold`` (None: its own)."""
    y = result.y_true
    colour_right = predicted_labels(colour_p_fake, THRESHOLD) == y
    detector_right = predicted_labels(result.p_fake, result.threshold if threshold is None else threshold) == y
    subsets = [("colour-only baseline", "all test images", colour_right, np.ones_like(colour_right)),
               (result.name, "all test images", detector_right, np.ones_like(colour_right)),
               (result.name, "colour-only right", detector_right, colour_right),
               (result.name, "colour-only wrong", detector_right, ~colour_right)]
    return _subset_accuracies(result.name, subsets, n_bootstrap, seed)


def _subset_accuracies(model: str, subsets, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """One row per ``(classifier, images, right, mask)``: the share of ``right`` within ``mask``
    with its bootstrap interval; NaN for an empty mask."""
    rows = []
    for classifier, images, right, mask in subsets:
        row = {"model": model, "classifier": classifier, "images": images,
               "n_images": int(mask.sum()), "accuracy": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        if mask.any():
            iv = proportion_ci(right[mask], n_bootstrap, seed=seed)
            row.update(accuracy=iv.estimate, ci_low=iv.low, ci_high=iv.high)
        rows.append(row)
    return pd.DataFrame(rows)


def near_duplicate_check(result: ModelResult, near_duplicate, threshold: float | None = None,
                         n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The detector's test accuracy on all test images, on those with no near-duplicate in the
    train split and on those with one (``near_duplicate``: a boolean per test image, from
    :func:`helpers.explore.near_duplicates`). If the score rests on test images that are copies
    of training images, it drops without them. One row per subset, with bootstrap intervals."""
    near = np.asarray(near_duplicate, dtype=bool)
    right = predicted_labels(result.p_fake, result.threshold if threshold is None else threshold) == result.y_true
    subsets = [(result.name, "all test images", right, np.ones_like(near)),
               (result.name, "no near-duplicate in train", right, ~near),
               (result.name, "near-duplicate in train", right, near)]
    return _subset_accuracies(result.name, subsets, n_bootstrap, seed)


def describe_near_duplicate_check(table: pd.DataFrame) -> str:
    """The finding of one model's :func:`near_duplicate_check` in words."""
    rows = {r.images: r for r in table.itertuples()}
    overall, clean, near = (rows[k] for k in ("all test images", "no near-duplicate in train",
                                              "near-duplicate in train"))
    if near.n_images == 0:
        return (f"No test image has a near-duplicate in the train split, so **{overall.model}**'s "
                f"{overall.accuracy:.1%} does not rest on copies of training images.")
    return (f"{near.n_images} of the {overall.n_images} test images have a near-duplicate in the "
            f"train split; **{overall.model}** gets {near.accuracy:.1%} of those right. Without "
            f"them its accuracy is {clean.accuracy:.1%} (95% CI [{clean.ci_low:.1%}, "
            f"{clean.ci_high:.1%}]), against {overall.accuracy:.1%} on all test images.")


def describe_colour_check(table: pd.DataFrame) -> str:
    """The finding of one model's :func:`colour_check` in words."""
    rows = {(r.classifier != "colour-only baseline", r.images): r for r in table.itertuples()}
    base, overall = rows[False, "all test images"], rows[True, "all test images"]
    right, wrong = rows[True, "colour-only right"], rows[True, "colour-only wrong"]
    text = (f"From colour alone, a gradient-boosted histogram classifier gets {base.accuracy:.1%} "
            f"of the test images right (95% CI [{base.ci_low:.1%}, {base.ci_high:.1%}]); "
            f"**{overall.model}** gets {overall.accuracy:.1%}. ")
    if wrong.n_images == 0:
        return text + ("Colour alone classifies every test image correctly, so this test split "
                       "cannot show whether the detector sees more than colour.")
    text += (f"On the {wrong.n_images} images whose colours mislead the baseline, the detector is "
             f"right on {wrong.accuracy:.1%} [{wrong.ci_low:.1%}, {wrong.ci_high:.1%}], against "
             f"{right.accuracy:.1%} on the other {right.n_images}. ")
    if wrong.ci_low <= 0.5:
        text += ("That interval reaches chance level: this test split cannot show that the detector "
                 "sees more than colour where colour misleads.")
    elif wrong.ci_high < right.accuracy:
        text += ("It is better than chance there, so it reads more than colour, but it errs more "
                 "there than elsewhere: part of what it learned is the classes' colours.")
    else:
        text += "It is about as accurate there as elsewhere: it reads more than colour."
    return text


def cross_generator_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flat table (one row per model) of :func:`cross_generator` results."""
    rows = []
    for r in results:
        row = {k: v for k, v in r.items() if not isinstance(v, Interval)}
        for key in ("gan_flag_rate", "own_fake_flag_rate", "real_flag_rate", "difference"):
            iv: Interval = r[key]
            row.update({key: iv.estimate, f"{key}_low": iv.low, f"{key}_high": iv.high})
        rows.append(row)
    return pd.DataFrame(rows)


def describe_cross_generator(result: dict[str, Any]) -> str:
    """The finding in words, generated from the numbers of :func:`cross_generator`."""
    gan, own, real, diff = (result[k] for k in ("gan_flag_rate", "own_fake_flag_rate",
                                                 "real_flag_rate", "difference"))
    text = (f"**{result['model']}** flags {gan} of the {result['n_gan']} images of the unseen GAN "
            f"as AI-generated, against {own} of the test split's own fakes and {real} of its "
            f"real photos. ")
    if np.isnan(diff.low):
        if gan.estimate == own.estimate:
            text += (f"Both rates are {gan.estimate:.0%} with no variation in either sample: no "
                     "difference is visible, so on this evidence the detector transfers to the "
                     "unseen generator.")
        else:
            text += (f"They differ by {diff.estimate:+.1%}; both samples are constant, so the "
                     "bootstrap gives no interval for the difference.")
    elif diff.high < 0:
        text += (f"That is {-diff.estimate:.1%} lower (95% CI of the difference "
                 f"[{diff.low:.1%}, {diff.high:.1%}] excludes zero): ")
        if gan.low <= real.high:
            text += ("it treats this generator's images about like real photos, so what it "
                     "learned is specific to the generator it was trained against.")
        elif gan.estimate >= 0.9:
            text += ("a measurable loss, but it still flags the great majority, so the detector "
                     "largely transfers to this generator.")
        elif gan.estimate >= 0.5:
            text += ("it catches most of them but misses a sizeable share, so part of what it "
                     "learned is specific to the generator it was trained against.")
        else:
            text += ("it misses most of them, so much of what it learned is specific to the "
                     "generator it was trained against.")
    elif diff.low > 0:
        text += (f"That is {diff.estimate:.1%} higher (95% CI of the difference "
                 f"[{diff.low:.1%}, {diff.high:.1%}]): the unseen GAN's images are easier for it "
                 "than the dataset's own fakes.")
    else:
        text += (f"The difference ({diff.estimate:+.1%}, 95% CI [{diff.low:.1%}, {diff.high:.1%}]) "
                 "is not distinguishable from zero: on this evidence the detector transfers to "
                 "the unseen generator.")
    if result.get("resized"):
        text += (f" (The GAN's {result['gan_resolution']}px images were resized to the model's "
                 "input size, which itself alters their pixel statistics.)")
    return text


def summary(results: Sequence[ModelResult], best: ModelResult, robustness: pd.DataFrame | None,
            cross: Sequence[dict[str, Any]], is_demo: bool = False,
            colour: pd.DataFrame | None = None, near: pd.DataFrame | None = None) -> str:
    """The notebook's closing paragraph (Markdown), written from the numbers; ``colour`` and
    ``near`` are :func:`colour_check` and :func:`near_duplicate_check` tables."""
    m = best.metrics
    lines = [(f"**{best.name}** (chosen on validation accuracy) classifies {m['accuracy']:.2%} of the "
              f"{m['n_test']} test images correctly (95% CI [{m['ci_low']:.2%}, {m['ci_high']:.2%}], "
              f"{m['ci_method']}), at threshold {m['threshold']:g}: {m['n_errors']} mistakes. "
              f"ROC AUC {m['auc']:.4f}, average precision {m['average_precision']:.4f}, "
              f"expected calibration error {m['ece']:.4f}, test loss {m['test_loss']:.4f}.")]
    if len(results) > 1:
        others = ", ".join(f"{r.name} {r.metrics['accuracy']:.2%}" for r in results if r is not best)
        lines.append(f"Other models: {others}.")
    if robustness is not None and len(robustness):
        part = robustness[(robustness["model"] == best.name) & (robustness["condition"] != "clean")]
        clean = robustness.loc[(robustness["model"] == best.name)
                               & (robustness["condition"] == "clean"), "accuracy"].iloc[0]
        worst = part.sort_values("accuracy").iloc[0]
        lines.append(f"Robustness: the largest drop is under {worst['condition']} "
                     f"({clean:.1%} to {worst['accuracy']:.1%}, AUC {worst['auc']:.3f}).")
    for c in cross:
        if c["model"] == best.name:
            lines.append(f"Unseen GAN: flagged {c['gan_flag_rate'].estimate:.1%} "
                         f"[{c['gan_flag_rate'].low:.1%}, {c['gan_flag_rate'].high:.1%}] against "
                         f"{c['own_fake_flag_rate'].estimate:.1%} of the dataset's own fakes.")
    if colour is not None and len(colour):
        mine = colour[colour["model"] == best.name].set_index(["classifier", "images"])
        base = mine.loc[("colour-only baseline", "all test images")]
        wrong = mine.loc[(best.name, "colour-only wrong")]
        if wrong["n_images"]:
            lines.append(f"Colour alone gets {base['accuracy']:.1%}; on the {wrong['n_images']} "
                         f"images whose colours mislead it, {best.name} is right on "
                         f"{wrong['accuracy']:.1%} [{wrong['ci_low']:.1%}, {wrong['ci_high']:.1%}].")
    if near is not None and len(near):
        mine = near[near["model"] == best.name].set_index("images")
        copies, clean = mine.loc["near-duplicate in train"], mine.loc["no near-duplicate in train"]
        if copies["n_images"]:
            lines.append(f"Without the {copies['n_images']} test images that have a near-duplicate "
                         f"in training: {clean['accuracy']:.1%} [{clean['ci_low']:.1%}, "
                         f"{clean['ci_high']:.1%}].")
    if is_demo:
        lines.append("These are DEMO numbers (a small synthetic set built offline), not a benchmark.")
    return " ".join(lines)


# --------------------------------------------------------------------------- figures

def plot_confusion(result: ModelResult, threshold: float | None = None):
    """Counts and row-normalised confusion matrices side by side."""
    import matplotlib.pyplot as plt

    threshold = result.threshold if threshold is None else threshold
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.6))
    for ax, normalize, title in ((axes[0], None, "counts"), (axes[1], "true", "normalised by true class")):
        skm.ConfusionMatrixDisplay.from_predictions(
            result.y_true, predicted_labels(result.p_fake, threshold), labels=[0, 1],
            display_labels=list(CLASS_NAMES), normalize=normalize, cmap="Blues", ax=ax,
            colorbar=False, values_format=".0f" if normalize is None else ".2%")
        ax.set_title(title, fontsize=10)
        ax.grid(False)
    fig.suptitle(f"{result.name}: test split, threshold {threshold:.3g}", fontsize=11)
    fig.tight_layout()
    return fig


def _operating_point(r: ModelResult, threshold: float) -> tuple[float, float, float]:
    """False-positive rate, recall (true-positive rate) and precision at ``threshold``."""
    y_pred = predicted_labels(r.p_fake, threshold)
    tp = int(((y_pred == 1) & (r.y_true == 1)).sum())
    fp = int(((y_pred == 1) & (r.y_true == 0)).sum())
    fpr = fp / max(int((r.y_true == 0).sum()), 1)
    tpr = tp / max(int((r.y_true == 1).sum()), 1)
    return fpr, tpr, tp / max(tp + fp, 1)


def plot_roc(results: Sequence[ModelResult]):
    """ROC curve of every model (scikit-learn's display), its AUC, and its threshold's point."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.4))
    for r in results:
        # no styling arguments: their names changed across scikit-learn 1.5-1.9
        skm.RocCurveDisplay.from_predictions(r.y_true, r.p_fake, pos_label=1, ax=ax, name=r.name)
        fpr, tpr, _ = _operating_point(r, r.threshold)
        ax.plot([fpr], [tpr], "k.", ms=9)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="false-positive rate (REAL called FAKE)", ylabel="true-positive rate (FAKE found)")
    ax.set_title("ROC on the test split (dot: each model's threshold)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_pr(results: Sequence[ModelResult]):
    """Precision-recall curve of every model (FAKE = positive), average precision, threshold point."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.4))
    for r in results:
        skm.PrecisionRecallDisplay.from_predictions(r.y_true, r.p_fake, pos_label=1, ax=ax,
                                                    name=r.name)
        _, recall, precision = _operating_point(r, r.threshold)
        ax.plot([recall], [precision], "k.", ms=9)
    prevalence = float(np.mean(results[0].y_true)) if results else 0.5
    ax.axhline(prevalence, color="grey", ls=":", lw=1, label=f"chance ({prevalence:.2f})")
    ax.set(xlabel="recall (FAKE found)", ylabel="precision (called FAKE and FAKE)", ylim=(0, 1.02))
    ax.set_title("precision-recall, FAKE positive (dot: each model's threshold)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_calibration(results: Sequence[ModelResult], n_bins: int = CALIBRATION_BINS):
    """Reliability diagram from :func:`sklearn.calibration.calibration_curve`, with the ECE,
    and below it how many test images fall in each bin."""
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0, 1, n_bins + 1)
    for r in results:
        frac, mean_p = calibration_curve(r.y_true, r.p_fake, n_bins=n_bins, strategy="uniform")
        ece = expected_calibration_error(r.y_true, r.p_fake, n_bins)
        ax.plot(mean_p, frac, "o-", ms=4, label=f"{r.name} (ECE {ece:.3f})")
        hist.hist(r.p_fake, bins=edges, histtype="step", lw=1.5)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfectly calibrated")
    ax.set(ylabel="fraction FAKE in bin", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.set_title(f"reliability diagram ({n_bins} equal-width bins)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    hist.set(yscale="log", xlabel="predicted P(FAKE)", ylabel="images")
    fig.tight_layout()
    return fig


def _short(name: str, width: int = 26) -> str:
    name = str(name)
    return name if len(name) <= width else "..." + name[-(width - 3):]


def plot_gallery(images: np.ndarray, table: pd.DataFrame, title: str, columns: int = 6):
    """Images of :func:`confident_mistakes` rows with file name, truth and P(FAKE)."""
    import matplotlib.pyplot as plt

    n = len(table)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.25 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, row) in zip(axes.ravel(), table.iterrows()):
        ax.imshow(images[int(row["index"])], interpolation="nearest")
        ax.set_title(f"{_short(row['file'])}\ntrue {row['true']}, P(FAKE)={row['p_fake']:.3f}",
                     fontsize=6.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_robustness(table: pd.DataFrame):
    """Accuracy and AUC per perturbation (one colour per model)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    order = list(dict.fromkeys(table["condition"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    for ax, column, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "auc", "ROC AUC")):
        sns.barplot(data=table, x="condition", y=column, hue="model", order=order, ax=ax)
        if table["model"].nunique() == 1:
            for container in ax.containers:
                ax.bar_label(container, fmt="%.3f", fontsize=7)
        ax.axhline(0.5, color="grey", ls=":", lw=1, zorder=5)
        ax.set(ylim=(0, 1.02), xlabel="", ylabel=label)
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Robustness on the test split (grey: chance)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_cross_generator(frame: pd.DataFrame):
    """Flag rate with 95 % CI on real photos, the dataset's own fakes and the unseen GAN."""
    import matplotlib.pyplot as plt

    keys = (("real_flag_rate", "test REAL photos"), ("own_fake_flag_rate", "test FAKE (own generator)"),
            ("gan_flag_rate", "unseen GAN (notebook 04)"))
    fig, ax = plt.subplots(figsize=(7, 1.3 + 0.9 * len(frame)))
    height = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        y = np.arange(len(frame)) + j * height
        err = np.vstack([frame[key] - frame[f"{key}_low"], frame[f"{key}_high"] - frame[key]])
        ax.barh(y, frame[key], height, xerr=err, capsize=3, label=label)
    ax.set_yticks(np.arange(len(frame)) + height, frame["model"])
    ax.set(xlim=(0, 1.05), xlabel="flagged as AI-generated (95% CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_comparison(frame: pd.DataFrame):
    """Accuracy with CI per model, and accuracy against inference speed (size = parameters)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.9 + 0.55 * max(len(frame), 3)))
    y = np.arange(len(frame))
    err = np.vstack([frame["accuracy"] - frame["ci_low"], frame["ci_high"] - frame["accuracy"]])
    left.errorbar(frame["accuracy"], y, xerr=err, fmt="o", capsize=4)
    left.set_yticks(y, frame["model"])
    left.set(xlabel="test accuracy (95% CI)")
    sizes = 30 + 270 * np.sqrt(frame["params"] / frame["params"].max())
    right.scatter(frame["inference_images_per_s"], frame["accuracy"], s=sizes, alpha=0.6)
    for _, row in frame.iterrows():
        right.annotate(f"{row['model']}\n{row['params']:,} params", (row["inference_images_per_s"],
                       row["accuracy"]), fontsize=7, ha="center", va="bottom")
    right.set_xscale("log")
    right.set(xlabel="inference images/s (log)", ylabel="test accuracy")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- files

def save_result_figure(fig, dataset: str, name: str) -> Path:
    """Save ``fig`` as ``results/<dataset>/<name>.png`` (atomically), next to the metrics files."""
    path = paths.results_dir(dataset) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def best_result(results: Sequence[ModelResult]) -> ModelResult:
    """The model chosen on *validation* data (as :func:`helpers.inference.best_checkpoint`:
    highest validation accuracy, then lowest validation loss), never on the test split."""
    def key(r: ModelResult):
        m = r.detector.info.get("metrics") or {}
        return (m.get("val_acc", 0.0), -m.get("val_loss", np.inf))
    return max(results, key=key)


def write_performance(dataset: str, results: Sequence[ModelResult], cache, config: dict,
                      extra: dict | None = None) -> tuple[Path, Path]:
    """``results/<dataset>/performance_metrics.csv`` and ``.json`` (atomic).

    The JSON holds the CSV's rows plus each model's classification report and training
    configuration, the run's configuration, the data fingerprint, the demo flag and the
    environment.
    """
    folder = paths.results_dir(dataset)
    frame = metrics_frame(results)
    frame.insert(1, "dataset", dataset)
    frame.insert(2, "is_demo", bool(cache.meta.get("is_demo", False)))
    csv_path = write_csv(frame, folder / "performance_metrics.csv")
    models = []
    for r, row in zip(results, frame.to_dict(orient="records")):
        report = classification_table(r.y_true, r.p_fake, row["threshold"])
        counts, _ = confusion_tables(r.y_true, r.p_fake, row["threshold"])
        models.append({**row, "classification_report": report.to_dict(orient="index"),
                       "confusion_matrix": counts.to_numpy().tolist(),
                       "training_config": r.detector.info.get("config"),
                       "validation_metrics": r.detector.info.get("metrics")})
    payload = {
        "dataset": dataset, "is_demo": bool(cache.meta.get("is_demo", False)),
        "data_fingerprint": cache.fingerprint, "split": "test",
        "threshold_override": config.get("THRESHOLD"),
        "config": config, "models": models, "environment": environment_fingerprint(),
        **(extra or {}),
    }
    json_path = write_json(folder / "performance_metrics.json", _clean(payload))
    return csv_path, json_path


def _clean(value: Any) -> Any:
    """JSON-ready copy: NaN becomes null, intervals become dicts, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Interval):
        return _clean(value.__dict__)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value
