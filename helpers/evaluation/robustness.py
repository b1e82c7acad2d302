"""Robustness: the detector's accuracy on the test images JPEG-compressed, blurred, rescaled and
cropped (the protocol and the severity grid: :mod:`helpers.core.postprocess`), and the severity
curves (:func:`severity_table`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from sklearn import metrics as skm

from ..core.detector import Detector
from ..core.images import fit_square
from ..core.postprocess import Perturbation, severity_grid
from ..core.selection import is_robust, most_robust, validation_rank
from ..core.stats import proportion_ci, ranking_ci
from .metrics import predicted_labels


def high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels.

    A cheap measure of fine detail: blurring lowers it, JPEG at low quality usually too.
    """
    x = np.asarray(images, dtype=np.float64)
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


def robustness_table(detector: Detector, sets: dict[str, tuple[Perturbation | None, np.ndarray]],
                     labels: np.ndarray, device: str = "cpu", batch_size: int | None = None,
                     threshold: float | None = None, clean_p_fake: np.ndarray | None = None) -> pd.DataFrame:
    """Accuracy, AUC and per-class recall of ``detector`` on each set of :func:`helpers.core.postprocess.perturbed_sets`.

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
    without degradations, by :func:`helpers.core.selection.validation_rank`) and the robust one
    users get among those trained with degradations (:func:`helpers.core.selection.most_robust`,
    by validation accuracy when none was measured); the robust one's image size decides when
    they differ. One or none of each may exist."""
    out = []
    for robust in (False, True):
        group = [d for d in detectors if is_robust(d.config) == robust]
        if not group:
            continue
        pick = most_robust(group, lambda d: d.robustness, lambda d: d.metrics) if robust else None
        out.append(pick or max(group, key=lambda d: validation_rank(d.metrics or {})))
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
