"""Classification metrics with bootstrap confidence intervals: accuracy, AUC, AP, F1, ECE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from ..core.detector import DEFAULT_THRESHOLD
from ..core.stats import proportion_ci
from ..data.datasets import CLASS_NAMES

#: Equal-width bins of the reliability diagram and of the expected calibration error.
CALIBRATION_BINS = 10


def predicted_labels(p_fake, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
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


def classification_metrics(y_true, p_fake, threshold: float = DEFAULT_THRESHOLD,
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


def classification_table(y_true, p_fake, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
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


def confusion_tables(y_true, p_fake, threshold: float = DEFAULT_THRESHOLD) -> tuple[pd.DataFrame, pd.DataFrame]:
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
                       threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
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
