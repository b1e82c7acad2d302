"""Every detector on every source: does what one detector learned carry over to other data?

A *source* is a labelled set of real and generated images: a dataset's clean test split
(CIFAKE: Stable Diffusion 1.4 vs CIFAR-10; shoes: Midjourney vs photos; the demo), or a
dataset's exported GAN images (notebook 04) against that dataset's real test photos. The
detectors are each dataset's best checkpoint trained from scratch (by validation; the
*specialists*) and every
ImageNet-pretrained detector trained on a dataset (``lite0``, ``lite0_probe``: the candidates
for a *generalist*). Every image reaches a detector
through the detector's *own* preprocessing (:func:`helpers.core.images.decode` from the raw file at
the detector's size, with its dataset's JPEG harmonisation), as ``predict`` would treat it:
a 32-pixel CIFAKE detector meets a shoe photo scaled down to 32x32, the 240-pixel shoes
detector a CIFAKE image scaled up.

The matrix reports ROC AUC and average precision (threshold-free, the field's standard for
cross-generator tests, as in Wang et al. CVPR 2020 and Ojha et al. CVPR 2023) with stratified
bootstrap 95 % CIs, and the accuracy and the share of each class flagged as AI-generated at the
detector's own threshold. :func:`unseen_summary` averages each detector over the sources it
never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.detector import Detector, load_all, train_hint
from ..core.images import BadImageError, decode
from ..core.models import input_normalisation
from ..core.selection import best_by_validation, most_robust
from ..core.stats import ranking_ci, stratified_subset
from ..data.cache import find_cache
from ..data.datasets import DATASETS, get_spec
from ..data.sources import read_files
from ..gan.export import export_dir, load_manifest
from .compare import fingerprint_problem


@dataclass
class Source:
    """Labelled image files to score: ``read(size, jpeg_quality)`` decodes them for a detector."""

    name: str
    files: list[Path | str]  # what each image was decoded from (for the record)
    labels: np.ndarray  # (N,) 0 = REAL, 1 = FAKE
    blobs: list[bytes]  # the raw file bytes, read once

    def read(self, size: int, jpeg_quality: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(images (M, size, size, 3) uint8, labels (M,)) of the files that decode; a file
        that does not is left out and counted in :func:`score`'s ``n_unreadable``."""
        images, keep = [], []
        for i, (name, blob) in enumerate(zip(self.files, self.blobs)):
            try:
                images.append(decode(blob, size, str(name), jpeg_quality)[0])
                keep.append(i)
            except BadImageError:
                continue
        return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
                self.labels[keep])


def split_source(dataset: str, split: str = "test", seed: int = 0, max_images: int | None = 2000) -> Source | str:
    """The ``split`` (``train``, ``val`` or ``test``) of ``dataset``'s most recent cache, a
    stratified, seeded subset of at most ``max_images``, read from its raw files; or why it is
    not available. ``val`` is what a choice may look at; ``test`` is reported."""
    cache = find_cache(dataset, seed=seed)
    if cache is None:
        return f"no cache of {dataset} (run `make data DATASET={dataset}`)"
    index = cache.indices(split)
    index = index[stratified_subset(cache.labels[index], max_images, seed)]
    source = Path(cache.meta["source"])
    if not source.exists():
        return f"its raw files ({source}) are gone"
    names = [str(f) for f in cache.files[index]]
    blobs = read_files(source, set(names))
    missing = [n for n in names if n not in blobs]
    if missing:
        return f"{len(missing)} {split} files missing from {source}"
    return Source(f"{dataset} {split}", names, cache.labels[index].astype(np.int64), [blobs[n] for n in names])


def test_source(dataset: str, seed: int = 0, max_images: int | None = 2000) -> Source | str:
    """The clean test split of ``dataset`` as a source (:func:`split_source`)."""
    return split_source(dataset, "test", seed, max_images)


def gan_source(dataset: str, seed: int = 0, max_images: int | None = 2000) -> Source | str:
    """``dataset``'s exported GAN images (FAKE) against its real test photos (REAL), at most
    ``max_images`` of each; or why it is not available."""
    manifest = load_manifest(dataset)
    if manifest is None or not manifest.get("files"):
        return f"no GAN export of {dataset} (run `make gan DATASET={dataset}`)"
    real = test_source(dataset, seed, None)
    if isinstance(real, str):
        return real
    real_idx = np.flatnonzero(real.labels == 0)
    rng = np.random.default_rng(seed)
    if max_images is not None and len(real_idx) > max_images:
        real_idx = np.sort(rng.choice(real_idx, max_images, replace=False))
    fakes = [export_dir(dataset) / name for name in manifest["files"][:max_images or None]]
    return Source(f"{dataset} GAN vs its real photos",
                  [real.files[i] for i in real_idx] + fakes,
                  np.concatenate([np.zeros(len(real_idx), np.int64), np.ones(len(fakes), np.int64)]),
                  [real.blobs[i] for i in real_idx] + [p.read_bytes() for p in fakes])


def is_pretrained(detector: Detector) -> bool:
    """Whether ``detector`` starts from ImageNet weights (its model has a fixed input normalisation)."""
    return input_normalisation(detector.architecture) is not None


def dataset_detectors(datasets: Sequence[str] | None = None, device: str = "cpu",
                      seed: int = 0) -> tuple[list[Detector], list[tuple[str, str]]]:
    """Of each dataset: its best detector trained from scratch (by validation: the
    *specialist*), every ImageNet-pretrained one and the one ``predict`` and the app use
    (:func:`helpers.core.selection.most_robust`) when it is another, each trained on that dataset's latest
    cache (so its own test split is clean of its training images); ``(detectors, skipped)``,
    titled ``<dataset>/<name>``."""
    detectors, skipped = [], []
    for dataset in datasets or list(DATASETS):
        found, unreadable = load_all(dataset, device)
        skipped += unreadable
        if not found:
            skipped.append((dataset, f"no trained detector (run {train_hint(dataset)})"))
            continue
        scratch = [d for d in found if not is_pretrained(d)]
        specialist = best_by_validation(scratch, lambda d: d.metrics)
        if scratch and specialist is None:
            skipped.append((dataset, "no detector trained from scratch has validation figures"))
        chosen = ([specialist] if specialist else []) + [d for d in found if is_pretrained(d)]
        users = most_robust(found, lambda d: d.robustness, lambda d: d.metrics)
        if users is not None and all(users is not d for d in chosen):
            chosen.append(users)  # the app shows its row as "on sources it never saw"
        for detector in chosen:
            detector.title = f"{dataset}/{detector.name}"
            cache = find_cache(dataset, detector.image_size, seed)
            problem = "no cache" if cache is None else fingerprint_problem(detector, cache)
            if problem:
                skipped.append((detector.name, problem))
                continue
            detectors.append(detector)
    return detectors, skipped


def score(detector: Detector, source: Source, device: str = "cpu", batch_size: int | None = None,
          n_bootstrap: int = 500, seed: int = 0) -> dict:
    """One cell of the matrix: AUC and average precision with 95 % CIs (``n_bootstrap``
    stratified resamples), accuracy and flag rates of ``detector`` on ``source`` at the
    detector's own threshold."""
    quality = get_spec(detector.dataset).harmonise_jpeg
    images, labels = source.read(detector.image_size, quality)
    p_fake = detector.predict_proba(images, device, batch_size)
    flagged = p_fake >= detector.threshold
    ranking = {}
    for metric in ("auc", "average_precision"):
        if np.unique(labels).size == 2:
            ci = ranking_ci(labels, p_fake, metric, n_bootstrap, seed=seed)
            ranking.update({metric: ci.estimate, f"{metric}_low": ci.low, f"{metric}_high": ci.high})
        else:
            ranking.update({metric: np.nan, f"{metric}_low": np.nan, f"{metric}_high": np.nan})
    return {"detector": detector.name, "source": source.name, "pretrained": is_pretrained(detector),
            "trained_on_source": source.name.split()[0] == detector.dataset
            and source.name.endswith("test"),
            "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
            "n_unreadable": len(source.labels) - len(labels), **ranking,
            "accuracy": float((flagged == labels.astype(bool)).mean()) if len(labels) else np.nan,
            "fake_flagged": float(flagged[labels == 1].mean()) if (labels == 1).any() else np.nan,
            "real_flagged": float(flagged[labels == 0].mean()) if (labels == 0).any() else np.nan,
            "threshold": detector.threshold}


def matrix(detectors: Sequence[Detector], sources: Sequence[Source], device: str = "cpu",
           n_bootstrap: int = 500) -> pd.DataFrame:
    """Every detector on every source: one row per pair (see :func:`score`)."""
    return pd.DataFrame([score(d, s, device, n_bootstrap=n_bootstrap) for d in detectors for s in sources])


def unseen_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per detector, the mean AUC and average precision over the sources it never saw (every
    source but its own test split), their number, and its AUC on its own test split."""
    rows = []
    for name, part in table.groupby("detector", sort=False):
        other = part[~part["trained_on_source"]].dropna(subset=["auc"])
        own = part.loc[part["trained_on_source"], "auc"]
        rows.append({"detector": name, "pretrained": bool(part["pretrained"].iloc[0]),
                     "own_auc": float(own.iloc[0]) if len(own) else np.nan,
                     "unseen_sources": len(other), "unseen_mean_auc": other["auc"].mean(),
                     "unseen_mean_ap": other["average_precision"].mean(),
                     "unseen_min_auc": other["auc"].min()})
    return pd.DataFrame(rows)


def describe_generalisation(summary: pd.DataFrame) -> str:
    """Which detector carries over best, and pretrained against from-scratch, in words."""
    summary = summary.dropna(subset=["unseen_mean_auc"])
    if summary.empty:
        return "No detector has a source it never saw: train detectors of other datasets to compare."
    top = summary.sort_values("unseen_mean_auc", ascending=False).iloc[0]
    text = (f"On the sources it never saw, **{top.detector}** does best: mean AUC "
            f"{top.unseen_mean_auc:.3f} over {top.unseen_sources} sources (worst {top.unseen_min_auc:.3f}).")
    groups = summary.groupby("pretrained")["unseen_mean_auc"].mean()
    if len(groups) == 2:
        gap = groups[True] - groups[False]
        text += (f" ImageNet-pretrained detectors average {groups[True]:.3f} there, detectors trained "
                 f"from scratch {groups[False]:.3f}: {gap:+.3f}.")
    return text


def describe(table: pd.DataFrame) -> str:
    """The matrix in words: each detector's own AUC against its AUC elsewhere."""
    lines = []
    for name, part in table.groupby("detector", sort=False):
        own = part[part["trained_on_source"]]
        other = part[~part["trained_on_source"]].dropna(subset=["auc"])
        if other.empty:
            continue
        text = (f"**{name}**: AUC {own['auc'].iloc[0]:.3f} on its own test split; "
                if len(own) else f"**{name}**: ")
        cells = "; ".join(f"{r.source} AUC {r.auc:.3f}, flags {r.fake_flagged:.0%} of fakes and "
                          f"{r.real_flagged:.0%} of real photos" for r in other.itertuples())
        verdict = ("it does not carry over (AUC near or below 0.6 elsewhere)" if other["auc"].max() < 0.6
                   else "it carries over in part" if other["auc"].min() < 0.9 else "it carries over")
        lines.append(f"{text}{cells}: {verdict}.")
    return "  \n".join(lines)


def heatmaps(table: pd.DataFrame, panels: Sequence[tuple[str, str, pd.DataFrame | None]]):
    """Side-by-side heat maps, detectors x sources, one per ``(column, title, colour)`` of
    ``panels``: the column's values written in each cell, coloured (0 red to 1 green) by
    ``colour``, a detectors x sources frame, or by the values themselves where it is None."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(panels), figsize=(13, 1.6 + 0.6 * table["detector"].nunique()))
    for ax, (column, title, colour) in zip(axes, panels):
        grid = table.pivot(index="detector", columns="source", values=column)
        sns.heatmap(grid if colour is None else colour, annot=grid, fmt=".2f", vmin=0, vmax=1,
                    cmap="RdYlGn", cbar=False, ax=ax)
        ax.set_title(title, fontsize=10)
        ax.set(xlabel="", ylabel="")
        plt.setp(ax.get_xticklabels(), rotation=25, ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def plot(table: pd.DataFrame):
    """Heat maps of AUC and of the share of fakes flagged, detectors x sources."""
    return heatmaps(table, (("auc", "ROC AUC (0.5 = chance)", None),
                            ("fake_flagged", "fakes flagged at the detector's threshold", None)))
