"""Notebook 02's computations: class balance, channel statistics, file formats and JPEG tables,
the colour-only baseline, near-duplicates and spectra.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.ensemble import HistGradientBoostingClassifier

from ..core.stats import proportion_ci
from ..data.cache import ImageCache
from ..data.datasets import CLASS_NAMES

#: Bins per channel of the colour-only baseline's histograms (32: 8 grey levels a bin).
COLOUR_BINS = 32


def channel_statistics(cache: ImageCache, split: str = "train") -> pd.DataFrame:
    """Per-class, per-channel mean and standard deviation of pixel values (0-1)."""
    images, labels = cache.part(split)
    rows = []
    for k, name in enumerate(CLASS_NAMES):
        pixels = images[labels == k].reshape(-1, 3).astype(np.float32) / 255.0
        for c, channel in enumerate("RGB"):
            rows.append({"class": name, "channel": channel, "mean": pixels[:, c].mean(),
                         "std": pixels[:, c].std()})
    table = pd.DataFrame(rows).pivot(index="class", columns="channel", values=["mean", "std"])
    return table.reindex(columns=pd.MultiIndex.from_product([["mean", "std"], list("RGB")])).round(4)


def format_table(cache: ImageCache) -> pd.DataFrame:
    """Files per class by container format, original size and colour mode."""
    records = cache.records()
    records["class"] = [CLASS_NAMES[k] for k in records["label"]]
    records["size"] = records["width"].astype(str) + "x" + records["height"].astype(str)
    return records.groupby(["class", "format", "size", "mode"]).size().rename("files").reset_index()


def jpeg_table(cache: ImageCache) -> pd.DataFrame:
    """Files per class by JPEG quantisation tables (id) and their estimated IJG quality."""
    records = cache.records()
    records["class"] = [CLASS_NAMES[k] for k in records["label"]]
    jpeg = records.dropna(subset=["qtables_id"])
    if jpeg.empty:
        return pd.DataFrame(columns=["class", "jpeg_quality", "qtables_id", "files"])
    return (jpeg.groupby(["class", "jpeg_quality", "qtables_id"]).size().rename("files")
            .reset_index())


def shortcut_verdict(cache: ImageCache) -> str:
    """One sentence: do file format, size or JPEG tables differ between the classes?"""
    records = cache.records()
    findings = []
    for column, what in (("format", "file format"), ("width", "original width"),
                         ("height", "original height"), ("mode", "colour mode"),
                         ("qtables_id", "JPEG quantisation tables")):
        values = [set(records.loc[records["label"] == k, column].dropna()) for k in (0, 1)]
        if values[0] and values[1] and values[0].isdisjoint(values[1]):
            findings.append(f"{what} differ completely between the classes "
                            f"(REAL {sorted(map(str, values[0]))[:3]} vs FAKE {sorted(map(str, values[1]))[:3]})")
    images, labels = cache.part("train")
    brightness = [images[labels == k].mean() / 255.0 for k in (0, 1)]
    colour = ""
    if abs(brightness[0] - brightness[1]) > 0.1:
        colour = (f" Content differs too: mean brightness REAL {brightness[0]:.2f} vs FAKE "
                  f"{brightness[1]:.2f}; a colour-only classifier would already score well, so "
                  "a detector's accuracy here is not all about generation artefacts.")
    if not findings:
        return ("No file-level shortcut found: file format, original size, colour mode and JPEG "
                "tables overlap between the classes." + colour)
    fix = cache.meta.get("harmonise_jpeg")
    tail = (f" The cache re-encodes every image at JPEG quality {fix} before resizing, so the "
            "last compression no longer carries the label." if fix else
            " A detector could learn these instead of generation artefacts.")
    return "Possible shortcut: " + "; ".join(findings) + "." + tail + colour


def colour_histograms(images: np.ndarray, bins: int = COLOUR_BINS, chunk: int = 4096) -> np.ndarray:
    """Per-channel intensity histograms of uint8 (N, H, W, 3) images, (N, 3 * bins), each
    channel's bins summing to 1: an image's colours with every texture, edge and shape
    thrown away. ``bins`` is a power of two up to 256."""
    if not (1 <= bins <= 256 and bins & (bins - 1) == 0):
        raise ValueError(f"bins must be a power of two from 1 to 256, not {bins}")
    shift = 8 - bins.bit_length() + 1  # value >> shift is the value's bin
    out = np.empty((len(images), 3 * bins), dtype=np.float32)
    for start in range(0, len(images), chunk):  # chunks: the bin indices of 120k images need GBs
        block = images[start:start + chunk]
        n, pixels = len(block), block.shape[1] * block.shape[2]
        # one bincount over all images: bin of each value, offset by channel and by image
        codes = (block >> shift).reshape(n, pixels, 3).astype(np.int64)
        codes += np.arange(3) * bins + np.arange(n)[:, None, None] * 3 * bins
        counts = np.bincount(codes.ravel(), minlength=n * 3 * bins)
        out[start:start + n] = counts.reshape(n, 3 * bins) / pixels
    return out


def colour_baseline(cache: ImageCache, seed: int = 0):
    """A classifier that sees only colour: scikit-learn's histogram gradient boosting on the
    train split's :func:`colour_histograms`. Whatever it gets right needs no trace of how an
    image was made: it measures how far the classes' *content* alone separates them, a
    shortcut that no preprocessing removes. ``predict_proba(colour_histograms(x))[:, 1]``
    gives its P(FAKE)."""

    images, labels = cache.part("train")
    return HistGradientBoostingClassifier(random_state=seed).fit(colour_histograms(images), labels)


def colour_only_accuracy(cache: ImageCache, split: str = "val", seed: int = 0):
    """Accuracy of :func:`colour_baseline` on ``split``, with its bootstrap interval
    (:class:`helpers.core.stats.Interval`): what a detector gets from colour alone."""

    images, labels = cache.part(split)
    predicted = colour_baseline(cache, seed).predict(colour_histograms(images))
    return proportion_ci(predicted == labels, seed=seed)


def thumbnails(images: np.ndarray, side: int = 16, chunk: int = 4096) -> np.ndarray:
    """Coarse colour layouts of uint8 (N, H, W, 3) images: each averaged down to ``side`` x
    ``side`` pixels, its own mean taken off and scaled to unit length, (N, side * side * 3).
    The dot product of two is the correlation of their layouts: 1 for the same picture,
    whatever its size or compression, near 1 for a slightly shifted copy or a generator's
    variant of one prompt."""

    out = np.empty((len(images), side * side * 3), dtype=np.float32)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk]))
        small = F.adaptive_avg_pool2d(block.permute(0, 3, 1, 2).float(), side).flatten(1)
        small -= small.mean(1, keepdim=True)
        out[start:start + len(block)] = F.normalize(small, dim=1).numpy()
    return out


def near_duplicates(cache: ImageCache, threshold: float = 0.95, side: int = 16,
                    splits: tuple[str, ...] = ("val", "test"), chunk: int = 1024) -> pd.DataFrame:
    """Images of ``splits`` (validation and test) whose coarse layout (:func:`thumbnails`)
    correlates with a training image's at ``threshold`` or more, most similar first: one row
    per evaluation image, with its closest training image.

    The cache already drops pixel-identical copies; this finds what that check cannot see:
    resized or re-compressed copies, crops of one photo, a generator's variants of one prompt
    (CIFAR-10, CIFAKE's source of real photos, has such pairs between its train and test sets).
    Such images are listed, not removed: a human has to judge whether a pair is the same picture.
    """

    columns = ["split", "index", "file", "label", "train_index", "train_file", "train_label",
               "similarity"]
    train_index = cache.indices("train")
    if len(train_index) == 0:
        return pd.DataFrame(columns=columns)
    train = torch.from_numpy(thumbnails(cache.images[train_index], side))
    rows = []
    for split in splits:
        index = cache.indices(split)
        for start in range(0, len(index), chunk):
            part = index[start:start + chunk]
            similarity = torch.from_numpy(thumbnails(cache.images[part], side)) @ train.T
            best, match = similarity.max(1)
            for i, score, j in zip(part, best.tolist(), match.tolist()):
                if score >= threshold:
                    t = train_index[j]
                    rows.append({"split": split, "index": int(i), "file": str(cache.files[i]),
                                 "label": CLASS_NAMES[cache.labels[i]], "train_index": int(t),
                                 "train_file": str(cache.files[t]),
                                 "train_label": CLASS_NAMES[cache.labels[t]],
                                 "similarity": round(score, 4)})
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)


def mean_log_spectrum(images: np.ndarray, max_images: int = 5000) -> np.ndarray:
    """Mean log-magnitude 2-D Fourier spectrum (centred) of the grey-level images.

    Generators leave periodic up-sampling traces that show up as peaks here.
    """
    sample = images[:: max(1, len(images) // max_images)].astype(np.float32) / 255.0
    grey = sample @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey -= grey.mean(axis=(1, 2), keepdims=True)  # drop the DC term's brightness
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(1, 2)))
    return np.log1p(spectrum).mean(axis=0)
