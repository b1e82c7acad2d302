"""Notebook 05's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from ..core import paths
from ..core.repro import atomic_path
from ..data.datasets import CLASS_NAMES
from .compare import ModelResult
from .metrics import CALIBRATION_BINS, expected_calibration_error, predicted_labels


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


#: x-axis labels of :func:`plot_severity`, per family of ``helpers.core.postprocess.SEVERITIES``
SEVERITY_AXES = {"blur": "Gaussian blur sigma (px)", "rescale": "rescale factor (and back)",
                 "jpeg": "JPEG quality", "crop": "crop (fraction of the side, resized back)",
                 "rescale_jpeg": "rescale x q/100, then JPEG quality q"}


def plot_severity(table: pd.DataFrame, family: str):
    """Accuracy and AUC against severity for one family of a ``robustness.severity_table``,
    one line per model with its 95 % bootstrap band."""
    import matplotlib.pyplot as plt

    part = table[table["family"] == family].sort_values("parameter")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, column, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "auc", "ROC AUC")):
        low, high = ("acc_low", "acc_high") if column == "accuracy" else ("auc_low", "auc_high")
        for model, rows in part.groupby("model", sort=False):
            line, = ax.plot(rows["parameter"], rows[column], marker="o", ms=3, label=model)
            ax.fill_between(rows["parameter"], rows[low], rows[high], color=line.get_color(), alpha=0.2)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set(ylim=(0.4, 1.01), xlabel=SEVERITY_AXES.get(family, family), ylabel=label)
        if family == "rescale":
            ax.set_xscale("log", base=2)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{family}: accuracy and AUC against severity (bands: 95 % bootstrap; grey: chance)",
                 fontsize=10)
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


def save_result_figure(fig, dataset: str, name: str) -> Path:
    """Save ``fig`` as ``results/<dataset>/<name>.png`` (atomically), next to the metrics files."""
    path = paths.results_dir(dataset) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
