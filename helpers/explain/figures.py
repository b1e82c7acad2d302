"""Notebook 06's figures: overlays, mosaics, averages, faithfulness.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam.utils.image import show_cam_on_image

from ..core.detector import Detector
from ..data.datasets import CLASS_NAMES
from .cams import CLASS_AGNOSTIC, METHODS, OUTCOMES, RANDOM, compute_all, local_evidence_maps, pick_examples
from .faithfulness import CAM_X_IMAGE, ROAD_COMBINED


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The map as a heat map over the uint8 RGB image (the library's ``show_cam_on_image``)."""
    return show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True,
                             image_weight=image_weight)


def mosaic(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Equal-sized uint8 RGB tiles laid out in rows, ``gap`` white pixels apart."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, n_cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = tile
    return out


def plot_tiles(rows: Sequence[Sequence[np.ndarray]], row_names: Sequence[str],
               titles: Sequence[str], suptitle: str):
    """Rows of equal-sized uint8 RGB tiles, one column per image, titled above each column.

    Drawn as one mosaic in one axes (dozens of small axes take seconds to render)."""
    import matplotlib.pyplot as plt

    n = len(rows[0])
    h, w = rows[0][0].shape[:2]
    gap = max(1, w // 16)
    fig, ax = plt.subplots(figsize=(1.4 * n + 1.0, 1.4 * len(rows) + 0.9))
    ax.imshow(mosaic(rows, gap), interpolation="nearest")
    ax.set_xticks([j * (w + gap) + w / 2 for j in range(n)], list(titles), fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))], list(row_names), fontsize=9)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_examples(images: np.ndarray, maps: Mapping[str, np.ndarray], titles: Sequence[str],
                  suptitle: str):
    """Grid: one column per image; the image, then one overlay row per method."""
    import matplotlib.pyplot as plt

    if len(images) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.0))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{suptitle}: none in the test split", ha="center", va="center")
        return fig
    rows = [list(images)] + [[overlay(img, m) for img, m in zip(images, cams)] for cams in maps.values()]
    return plot_tiles(rows, ["image", *maps], titles, suptitle)


def example_figures(detector: Detector, images: np.ndarray, files: Sequence[str],
                    p_fake: np.ndarray, groups: np.ndarray, n_per_group: int,
                    methods: Iterable[str] = tuple(METHODS), device: str | torch.device = "cpu",
                    seed: int = 0) -> dict:
    """One labelled grid per outcome group (TP, TN, FP, FN), explaining the *predicted* class
    (P(FAKE) at or above the detector's threshold).

    Each method's CAM is computed once for all picked images of a group (one target each).
    """
    figures = {}
    methods = list(methods)
    for name, idx in pick_examples(groups, n_per_group, seed).items():
        predicted = (p_fake[idx] >= detector.threshold).astype(int)
        maps = compute_all(detector, images[idx], predicted, methods, device) if len(idx) else {}
        title = f"{name}: {OUTCOMES[name]}" + ("; maps explain the predicted class" if len(idx) else "")
        figures[name] = plot_examples(images[idx], maps, example_titles(files, p_fake, idx), title)
    return figures


def example_titles(files: Sequence[str], p_fake: np.ndarray, idx: np.ndarray) -> list[str]:
    """Column titles of an example grid: file name and P(FAKE)."""
    return [f"{Path(str(files[i])).name}\nP(FAKE)={p_fake[i]:.2f}" for i in idx]


def local_evidence_figures(detector: Detector, images: np.ndarray,
                           files: Sequence[str], p_fake: np.ndarray, groups: np.ndarray,
                           n_per_group: int, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """The local view's maps for the same examples as :func:`example_figures` (same seed)."""
    figures = {}
    for name, idx in pick_examples(groups, n_per_group, seed).items():
        if len(idx):
            maps = local_evidence_maps(detector, images[idx], device)
            figures[name] = plot_local_evidence(images[idx], maps, example_titles(files, p_fake, idx),
                                                f"{name}: {OUTCOMES[name]}")
    return figures


def plot_local_evidence(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], suptitle: str):
    """Images over their local-evidence maps on one symmetric scale (red: FAKE, blue: REAL)."""
    from matplotlib import colormaps

    scale = float(np.abs(maps).max()) or 1.0
    colours = colormaps["RdBu_r"]((maps / scale + 1) / 2)[..., :3]  # (N, H, W, 3) in [0, 1]
    tinted = ((0.5 * images / 255.0 + 0.5 * colours) * 255).round().astype(np.uint8)
    return plot_tiles([list(images), list(tinted)], ["image", "local evidence"], titles,
                      f"{suptitle} (colour scale ±{scale:.2f} logit per neighbourhood)")


def plot_average_maps(averages: Mapping[str, Mapping[str, np.ndarray]], title: str = ""):
    """Class-average maps: one row per method, one column per class (same colour scale)."""
    import matplotlib.pyplot as plt

    methods = list(averages)
    classes = sorted({c for per in averages.values() for c in per}, key=CLASS_NAMES.index)
    fig, axes = plt.subplots(len(methods), len(classes), figsize=(3.0 * len(classes) + 0.6,
                                                                  2.7 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        for j, name in enumerate(classes):
            ax = axes[i, j]
            if name in averages[method]:
                im = ax.imshow(averages[method][name], cmap="jet", vmin=0, vmax=1)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            what = "class-agnostic" if method in CLASS_AGNOSTIC else f"evidence for {name}"
            ax.set_title(f"{method}: {what}\n(mean over {name} test images)", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_faithfulness(table: pd.DataFrame, metrics: Sequence[str] = (ROAD_COMBINED, CAM_X_IMAGE)):
    """Mean score with its CI per method, one panel per metric; the random baseline in grey."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = table[table["metric"] == metric]
        colours = ["0.6" if m == RANDOM else "C0" for m in rows["method"]]
        err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        ax.bar(rows["method"], rows["mean"], yerr=err, color=colours, capsize=4)
        ax.axhline(0, color="k", linewidth=0.8)
        better = rows["better_if"].iloc[0] if len(rows) else "higher"
        ax.set_title(f"{metric} ({better} = more faithful)", fontsize=9)
        ax.set_ylabel("(LeRF - MoRF) / 2, logit units" if metric == ROAD_COMBINED
                      else "change of the explained logit")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig
