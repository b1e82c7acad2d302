"""Breaking one detector's test result down (notebook 05): the two test protocols, the image
categories, the mistakes of each kind, and the models' accuracy against training time.

* Protocols: the *published* one scores every test file, as the papers do (CIFAKE: all 20,000
  official test files); the *clean* one leaves out the test files whose decoded pixels also
  occur in train or validation (378 of CIFAKE's test fakes), which the cache removes.
* Categories: CIFAKE's file names carry the CIFAR-10 class of each image
  (:func:`helpers.data.datasets.category_of`), so accuracy can be read per class and per category.
* Accuracy against time: each model's validation accuracy after every epoch against the
  seconds of training so far, from the ``<model>_history.csv`` the training loop writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..core import paths
from ..core.stats import proportion_ci
from ..data.datasets import CLASS_NAMES, DatasetSpec, category_of
from .compare import ModelResult
from .metrics import classification_metrics, confident_mistakes

#: The two test protocols, as the tables name them: every official test file, and the files
#: left after removing those whose pixels repeat a training or validation image.
PUBLISHED, CLEAN = "published", "clean"


def protocol_table(result: ModelResult, cache, device: str = "cpu", batch_size: int | None = None,
                   n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per protocol (``published``, ``clean``): accuracy with its 95 % CI, AUC, average
    precision and the number of images, at the detector's threshold.

    ``result`` holds the clean test split's predictions (:func:`helpers.evaluation.compare.evaluate_detector`
    on ``cache.part("test")``); the removed test images (``cache.removed_from("test")``) are
    scored here and added for the published protocol.
    """
    removed = cache.removed_from("test")
    p_removed = (result.detector.predict_proba(cache.images[removed], device, batch_size)
                 if len(removed) else np.zeros(0))
    sets = {PUBLISHED: (np.concatenate([result.y_true, cache.labels[removed].astype(np.int64)]),
                        np.concatenate([result.p_fake, p_removed])),
            CLEAN: (result.y_true, result.p_fake)}
    rows = []
    for protocol, (y, p) in sets.items():
        m = classification_metrics(y, p, result.threshold, n_bootstrap, seed)
        rows.append({"model": result.name, "protocol": protocol, "n_test": m["n_test"],
                     "n_removed": len(removed) if protocol == CLEAN else 0,
                     **{k: m[k] for k in ("accuracy", "ci_low", "ci_high", "auc", "average_precision",
                                          "n_errors", "threshold")}})
    return pd.DataFrame(rows)


def describe_protocols(table: pd.DataFrame) -> str:
    """The two protocols of one model in a sentence (from the numbers)."""
    rows = {r.protocol: r for r in table.itertuples()}
    pub, clean = rows[PUBLISHED], rows[CLEAN]
    if clean.n_removed == 0:
        return (f"**{pub.model}**: no test file repeats a training or validation image, so both "
                f"protocols are the same {pub.n_test:,} images: {pub.accuracy:.2%} "
                f"[{pub.ci_low:.2%}, {pub.ci_high:.2%}].")
    return (f"**{pub.model}**: {pub.accuracy:.2%} [{pub.ci_low:.2%}, {pub.ci_high:.2%}] on all "
            f"{pub.n_test:,} test files (the published protocol, AUC {pub.auc:.4f}); "
            f"{clean.accuracy:.2%} [{clean.ci_low:.2%}, {clean.ci_high:.2%}] on the {clean.n_test:,} "
            f"left after removing the {clean.n_removed} whose pixels also occur in train or "
            f"validation (the clean protocol, AUC {clean.auc:.4f}).")


def categories(files: Sequence[str], spec: DatasetSpec) -> np.ndarray:
    """The category of each file name (None where it has none), as an object array."""
    return np.array([category_of(str(f), spec) for f in files], dtype=object)


def per_category_table(result: ModelResult, spec: DatasetSpec, n_bootstrap: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """Accuracy per category and class (REAL, FAKE) with bootstrap 95 % CIs, in the spec's
    category order; empty when the dataset's file names carry no category."""
    cats = categories(result.files, spec)
    right = (result.p_fake >= result.threshold).astype(np.int64) == result.y_true
    rows = []
    for category in spec.categories:
        for label, name in enumerate(CLASS_NAMES):
            mask = (cats == category) & (result.y_true == label)
            if not mask.any():
                continue
            iv = proportion_ci(right[mask], n_bootstrap, seed=seed)
            rows.append({"model": result.name, "category": category, "class": name,
                         "n_images": int(mask.sum()), "n_errors": int((~right[mask]).sum()),
                         "accuracy": iv.estimate, "ci_low": iv.low, "ci_high": iv.high})
    return pd.DataFrame(rows, columns=["model", "category", "class", "n_images", "n_errors",
                                       "accuracy", "ci_low", "ci_high"])


def describe_categories(table: pd.DataFrame) -> str:
    """Where one model errs most and least, per class, in words."""
    lines = []
    for name in CLASS_NAMES:
        part = table[table["class"] == name].sort_values("accuracy")
        if part.empty:
            continue
        worst, best = part.iloc[0], part.iloc[-1]
        what = "real photos called AI-generated" if name == "REAL" else "AI-generated images passed as real"
        lines.append(f"{name}: most errors on **{worst['category']}** ({worst['n_errors']} of "
                     f"{worst['n_images']}, accuracy {worst['accuracy']:.1%}), fewest on "
                     f"**{best['category']}** ({best['accuracy']:.1%}) - errors here are {what}.")
    return "  \n".join(lines)


def plot_per_category(table: pd.DataFrame):
    """Accuracy per category, REAL and FAKE side by side, with 95 % CIs."""
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(table["category"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(cats) + 2), 3.6))
    width = 0.38
    for j, name in enumerate(CLASS_NAMES):
        part = table[table["class"] == name].set_index("category").reindex(cats)
        x = np.arange(len(cats)) + (j - 0.5) * width
        err = np.vstack([part["accuracy"] - part["ci_low"], part["ci_high"] - part["accuracy"]])
        ax.bar(x, part["accuracy"], width, yerr=err, capsize=2, label=name)
    ax.set_xticks(np.arange(len(cats)), cats, rotation=30, ha="right")
    low = float(table["ci_low"].min())
    ax.set(ylim=(max(0.0, low - 0.02), 1.0), ylabel="test accuracy (95% CI)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{table['model'].iloc[0]}: accuracy per category", fontsize=10)
    fig.tight_layout()
    return fig


def mistakes_by_kind(result: ModelResult, k: int = 12) -> dict[str, pd.DataFrame]:
    """The ``k`` most confident mistakes of each kind: ``"REAL called FAKE"`` (false
    positives) and ``"FAKE called REAL"`` (misses), columns as
    :func:`helpers.evaluation.metrics.confident_mistakes` (``index`` into the evaluated set)."""
    table = confident_mistakes(result.y_true, result.p_fake, result.files, len(result.y_true),
                               result.threshold)
    return {f"{truth} called {called}": table[table["true"] == truth].head(k).reset_index(drop=True)
            for truth, called in (("REAL", "FAKE"), ("FAKE", "REAL"))}


def training_curves(dataset: str, names: Sequence[str]) -> pd.DataFrame:
    """Validation accuracy after each epoch against the cumulative training seconds (validation
    included), one block of rows per model in ``names`` whose ``<name>_history.csv`` exists in
    ``results/<dataset>/models/``."""
    frames = []
    for name in names:
        path = paths.RESULTS / dataset / "models" / f"{name}_history.csv"
        if path.is_file():
            history = pd.read_csv(path)
            frames.append(pd.DataFrame({"model": name, "epoch": history["epoch"],
                                        "seconds": history["seconds"].cumsum(),
                                        "val_acc": history["val_acc"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["model", "epoch", "seconds", "val_acc"])


def time_to_reach(curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per model: the first epoch whose validation accuracy reaches ``target`` and its seconds
    (NaN when never), and the best validation accuracy reached."""
    rows = []
    for name, part in curves.groupby("model", sort=False):
        hit = part[part["val_acc"] >= target]
        rows.append({"model": name, "target": target, "best_val_acc": float(part["val_acc"].max()),
                     "epoch": int(hit["epoch"].iloc[0]) if len(hit) else np.nan,
                     "seconds": float(hit["seconds"].iloc[0]) if len(hit) else np.nan})
    return pd.DataFrame(rows)


def plot_accuracy_vs_time(curves: pd.DataFrame, references: Sequence[tuple[str, float]] = ()):
    """Validation accuracy against training minutes, one line per model, with the published
    results as dotted horizontal lines (they are *test* accuracies, for orientation)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, part in curves.groupby("model", sort=False):
        ax.plot(part["seconds"] / 60, part["val_acc"], marker=".", label=name)
    low = float(curves["val_acc"].min()) if len(curves) else 0.5
    for who, accuracy in references:
        if accuracy >= low:
            ax.axhline(accuracy, color="grey", ls=":", lw=1)
            ax.annotate(f"{who} {accuracy:.2%}", (0, accuracy), fontsize=7, color="dimgray",
                        va="bottom")
    ax.set(xlabel="training time (minutes, validation included)", ylabel="validation accuracy",
           xlim=(0, None), ylim=(max(0.5, low - 0.01), 1.0))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
