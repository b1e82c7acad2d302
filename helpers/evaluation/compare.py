"""Scoring every detector of a dataset on its test split, the checks that keep the comparison
honest (same data, shortcuts, near-duplicates, a second generator) and the saved metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import paths
from ..core.accel import inference_batch_size
from ..core.detector import DEFAULT_THRESHOLD, Detector
from ..core.models import count_parameters
from ..core.repro import environment_fingerprint, json_ready, write_csv, write_json
from ..core.selection import best_by_validation
from ..core.stats import Interval, difference_ci, proportion_ci
from . import columns
from .metrics import classification_metrics, classification_table, confusion_tables, predicted_labels
from .robustness import resize_to

#: Row labels of the checks' tables; :mod:`helpers.evaluation.text` reads the rows by them.
ALL_TEST = "all test images"
COLOUR_BASELINE = "colour-only baseline"
COLOUR_RIGHT, COLOUR_WRONG = "colour-only right", "colour-only wrong"
NO_NEAR_COPY, NEAR_COPY = "no near-duplicate in train", "near-duplicate in train"


def fingerprint_problem(detector: Detector, cache) -> str | None:
    """Why ``detector`` must not be scored on ``cache``'s test split, or None if it may.

    The checkpoint records the fingerprint of the data it was trained on (images, labels and
    split). A different fingerprint means a different split, so today's test images may have
    been its training images.
    """
    recorded = detector.data_fingerprint
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


class BrokenDetectorError(ValueError):
    """A detector whose probabilities are NaN or infinite: no metric of it means anything."""


def check_finite(detector: Detector, p_fake: np.ndarray, what: str = "test images") -> None:
    """Raise :class:`BrokenDetectorError` unless every probability is finite: NaN >= threshold
    is False, so a broken model would otherwise be scored as calling everything REAL."""
    bad = int((~np.isfinite(np.asarray(p_fake, dtype=np.float64))).sum())
    if bad:
        raise BrokenDetectorError(
            f"{detector.name} ({paths.shown(detector.path) if detector.path else 'in memory'}): "
            f"{bad:,} of {len(p_fake):,} {what} get a NaN or infinite probability. The model is "
            "broken (a float16 run that overflowed leaves such weights) and is not evaluated: "
            "train it again, or delete the checkpoint so that the others are evaluated.")


def evaluate_detector(detector: Detector, images: np.ndarray, labels: np.ndarray,
                      files: Sequence[str], device: str = "cpu", batch_size: int | None = None,
                      threshold: float | None = None, n_bootstrap: int = 1000,
                      seed: int = 0) -> ModelResult:
    """Predict ``images`` (the test split) and compute :func:`classification_metrics` plus the
    detector's size, training time and inference speed.

    The speed is that of this very pass of :meth:`Detector.predict_proba` over the
    test images (after a one-batch warm-up), decoding excluded; ``benchmarks/bench_inference.py``
    measures it more carefully. ``threshold`` None: the detector's own (chosen on validation).
    """
    batch_size = inference_batch_size(device, batch_size)
    detector.predict_proba(images[:batch_size], device, batch_size)  # warm-up: one-time allocations
    start = time.perf_counter()
    p_fake = detector.predict_proba(images, device, batch_size)
    seconds = time.perf_counter() - start
    check_finite(detector, p_fake)
    row: dict[str, Any] = {"model": detector.name, "architecture": detector.architecture}
    threshold = detector.decision_threshold(threshold)
    row.update(classification_metrics(labels, p_fake, threshold, n_bootstrap, seed))
    row.update(
        params=int(count_parameters(detector.model)),
        train_seconds=detector.train_seconds,
        val_accuracy=detector.val_accuracy,
        val_loss=float(detector.metrics.get("val_loss", float("nan"))),
        inference_images_per_s=len(images) / seconds if seconds > 0 else float("nan"),
        image_size=detector.image_size, checkpoint=paths.shown(detector.path),
        trained_on=detector.data_fingerprint,
    )
    return ModelResult(detector, np.asarray(labels).astype(np.int64), p_fake,
                       np.asarray(files), row)


def metrics_frame(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per model: the columns of ``performance_metrics.csv``, the declared ones
    (:data:`helpers.evaluation.columns.COLUMNS`) first, in their order."""
    frame = pd.DataFrame([r.metrics for r in results])
    first = [n for n in columns.csv_names() if n in frame.columns]
    return frame[first + [n for n in frame.columns if n not in first]]


def shown_names() -> list[str]:
    """The CSV columns of notebook 05's headline table (the model is its index)."""
    return [n for n in columns.csv_names(columns.NOTEBOOK) if n != "model"]


def comparison_table(results: Sequence[ModelResult]) -> pd.DataFrame:
    """The side-by-side table of several models: the declared columns of notebook 05, under
    their headings, in their formats."""
    rows = metrics_frame(results).to_dict(orient="records")
    shown = columns.shown(columns.NOTEBOOK)
    table = pd.DataFrame({c.label: [c.text(row) for row in rows] for c in shown})
    return table.set_index(shown[0].label)


def cross_generator(result: ModelResult, gan_images: np.ndarray, gan_resolution: int | None = None,
                    device: str = "cpu", batch_size: int | None = None, threshold: float | None = None,
                    n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Rate at which a detector flags an unseen generator's images as AI-generated.

    Compared with its rate on the test split's own fakes (its recall) and on the test split's
    real photos (its false-positive rate), from ``result`` (:func:`evaluate_detector`), each
    with a bootstrap interval, and the difference unseen - own with an interval from
    resampling both sets independently.

    ``gan_images`` should already be at the detector's input size, decoded by the project's
    rule (``helpers.gan.export.load_exported(dataset, size)``); other sizes are brought to it with
    :func:`resize_to`. ``gan_resolution`` is the GAN's own output size, for the record.
    """

    detector = result.detector
    threshold = result.threshold if threshold is None else threshold
    gan_images = np.asarray(gan_images)
    gan = resize_to(gan_images, detector.image_size)
    flag_gan = predicted_labels(detector.predict_proba(gan, device, batch_size), threshold)
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
    (:func:`helpers.explore.stats.colour_baseline`; ``colour_p_fake`` is its P(FAKE) on the same
    test images). A detector that reads how images were made stays accurate on the images
    whose colours mislead; one that learned the classes' colours falls to the baseline there.
    One row per subset, with bootstrap intervals; an empty subset gets NaN. The baseline
    decides at 0.5; the detector at ``threshold`` (None: its own)."""
    y = result.y_true
    colour_right = predicted_labels(colour_p_fake, DEFAULT_THRESHOLD) == y
    detector_right = predicted_labels(result.p_fake, result.threshold if threshold is None else threshold) == y
    subsets = [(COLOUR_BASELINE, ALL_TEST, colour_right, np.ones_like(colour_right)),
               (result.name, ALL_TEST, detector_right, np.ones_like(colour_right)),
               (result.name, COLOUR_RIGHT, detector_right, colour_right),
               (result.name, COLOUR_WRONG, detector_right, ~colour_right)]
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
    :func:`helpers.explore.stats.near_duplicates`). If the score rests on test images that are copies
    of training images, it drops without them. One row per subset, with bootstrap intervals."""
    near = np.asarray(near_duplicate, dtype=bool)
    right = predicted_labels(result.p_fake, result.threshold if threshold is None else threshold) == result.y_true
    subsets = [(result.name, ALL_TEST, right, np.ones_like(near)),
               (result.name, NO_NEAR_COPY, right, ~near),
               (result.name, NEAR_COPY, right, near)]
    return _subset_accuracies(result.name, subsets, n_bootstrap, seed)


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


def best_result(results: Sequence[ModelResult]) -> ModelResult:
    """The model chosen on *validation* data by :func:`helpers.core.selection.best_by_validation`
    (the rule that picks a dataset's best checkpoint), never on the test split. Raises
    ValueError when no model has validation figures."""
    best = best_by_validation(results, lambda r: r.detector.metrics)
    if best is None:
        raise ValueError("no detector has validation figures (val_acc) to choose by; retrain one "
                         "with `make train` — the best model is never chosen on test")
    return best


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
                       "training_config": r.detector.config,
                       "validation_metrics": r.detector.metrics})
    payload = {
        "dataset": dataset, "is_demo": bool(cache.meta.get("is_demo", False)),
        "data_fingerprint": cache.fingerprint, "split": "test",
        "threshold_override": config.get("THRESHOLD"),
        "config": config, "models": models, "environment": environment_fingerprint(),
        **(extra or {}),
    }
    json_path = write_json(folder / "performance_metrics.json", json_ready(payload))
    return csv_path, json_path

