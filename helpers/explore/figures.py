"""Notebook 02's figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.cache import ImageCache
from ..data.datasets import CLASS_NAMES, SPLITS
from .stats import mean_log_spectrum


def sample_grid(cache: ImageCache, per_class: int = 12, split: str = "train", seed: int = 0):
    """A figure with one row of random ``split`` images per class, file names as titles:
    ``per_class`` of each, or all of them when a class has fewer (a small dataset)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    index = cache.indices(split)
    pools = [index[cache.labels[index] == row] for row in range(len(CLASS_NAMES))]
    columns = max(1, min(per_class, max(len(pool) for pool in pools)))
    fig, axes = plt.subplots(2, columns, figsize=(1.2 * columns, 3.0), squeeze=False)
    for row, pool in enumerate(pools):
        chosen = rng.choice(pool, min(per_class, len(pool)), replace=False)
        for ax in axes[row]:
            ax.axis("off")
        for ax, i in zip(axes[row], chosen):
            ax.imshow(cache.images[i], interpolation="nearest")
            ax.set_title(str(cache.files[i]).rsplit("/", 1)[-1][:12], fontsize=6)
        axes[row, 0].text(-0.15, 0.5, CLASS_NAMES[row], transform=axes[row, 0].transAxes,
                          ha="right", va="center", fontsize=11, fontweight="bold")
    fig.suptitle(f"{cache.meta['title']}: random {split} images", fontsize=10)
    return fig


def near_duplicate_figure(cache: ImageCache, table: pd.DataFrame, n: int = 8):
    """The ``n`` most similar pairs of :func:`near_duplicates`: evaluation image above, its
    closest training image below; None when there are none."""
    import matplotlib.pyplot as plt

    table = table.head(n)
    if table.empty:
        return None
    fig, axes = plt.subplots(2, len(table), figsize=(1.6 * len(table), 3.6), squeeze=False)
    for k, (_, row) in enumerate(table.iterrows()):
        for ax, i, title in ((axes[0, k], row["index"], f"{row['split']} {row['label']}\n{row['similarity']:.3f}"),
                             (axes[1, k], row["train_index"], f"train {row['train_label']}")):
            ax.imshow(cache.images[i], interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("Closest training image of each near-duplicate (top: evaluation image)", fontsize=9)
    return fig


def spectrum_figure(cache: ImageCache, split: str = "train"):
    """Mean log spectrum of REAL, of FAKE, and their difference."""
    import matplotlib.pyplot as plt

    images, labels = cache.part(split)
    spectra = [mean_log_spectrum(images[labels == k]) for k in (0, 1)]
    diff = spectra[1] - spectra[0]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, spec, title in zip(axes[:2], spectra, CLASS_NAMES):
        im = ax.imshow(spec, cmap="viridis")
        ax.set_title(f"{title}: mean log |FFT|")
        fig.colorbar(im, ax=ax, fraction=0.046)
    bound = np.abs(diff).max()
    im = axes[2].imshow(diff, cmap="coolwarm", vmin=-bound, vmax=bound)
    axes[2].set_title("FAKE - REAL")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{cache.meta['title']} ({split} split)", fontsize=10)
    return fig


def balance_figure(cache: ImageCache):
    """Bar chart of images per split and class."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    counts = cache.counts().drop(index="total", errors="ignore").drop(columns="total")
    frame = counts.reset_index().melt(id_vars="split", var_name="class", value_name="images")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.barplot(frame, x="split", y="images", hue="class", ax=ax,
                order=[s for s in (*SPLITS, "removed (leakage)") if s in counts.index])
    for container in ax.containers:
        ax.bar_label(container, fontsize=8)
    ax.set_title("Images per split and class")
    return fig
