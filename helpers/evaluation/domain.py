"""Does each detector know what it was trained on? The domain check on every source.

Each detector carries a domain check fitted on its own training images
(:mod:`helpers.core.domain`, threshold on validation so that 95 % of in-domain images pass).
Here it meets every source of the cross-dataset matrix (:mod:`.cross_dataset`), each image
through the detector's own preprocessing from its raw file, as ``predict`` would treat it:
the share of the detector's own test images that pass (about 95 % by construction), the
share of every other source flagged as outside, the AUROC of "own test images vs that
source" on the check's score (threshold-free), and the detector's accuracy on the images
that pass against all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..core.detector import Detector
from ..core.images import BadImageError, decode
from ..core.stats import proportion_ci, ranking_ci
from ..data.datasets import get_spec
from .cross_dataset import Source, heatmaps


def read_with_sides(source: Source, size: int, jpeg_quality: int | None):
    """(images (M, size, size, 3) uint8, labels (M,), shorter side of each file in px (M,)) of
    the files of ``source`` that decode."""
    images, keep, sides = [], [], []
    for i, (name, blob) in enumerate(zip(source.files, source.blobs)):
        try:
            array, info = decode(blob, size, str(name), jpeg_quality)
        except BadImageError:
            continue
        images.append(array)
        keep.append(i)
        sides.append(float(min(info.width, info.height)))
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
            source.labels[keep], np.asarray(sides))


def _own(detector: Detector, source: Source) -> bool:
    return source.name == f"{detector.dataset} test"


def score_source(detector: Detector, source: Source, device: str = "cpu") -> dict:
    """What :func:`table` reports for one detector on one source, and the raw scores
    (``_score``, ``_inside``) the AUROC against the detector's own test split needs."""
    images, labels, sides = read_with_sides(source, detector.image_size, get_spec(detector.dataset).harmonise_jpeg)
    score, inside = detector.in_domain(images, sides)
    score_only = score <= detector.domain.threshold
    inside = inside.astype(bool)
    p_fake = detector.predict_proba(images, device)
    right = (p_fake >= detector.threshold) == labels.astype(bool)
    ci = proportion_ci(inside, 200) if len(inside) else None
    return {"detector": detector.name, "source": source.name, "own_test": _own(detector, source),
            "n": len(labels), "in_domain": float(inside.mean()) if len(inside) else np.nan,
            "in_domain_low": ci.low if ci else np.nan, "in_domain_high": ci.high if ci else np.nan,
            "in_domain_score_only": float(score_only.mean()) if len(inside) else np.nan,
            "accuracy_all": float(right.mean()) if len(right) else np.nan,
            "accuracy_in_domain": float(right[inside].mean()) if inside.any() else np.nan,
            "_score": score}


def table(detectors: Sequence[Detector], sources: Sequence[Source], device: str = "cpu",
          n_bootstrap: int = 200) -> pd.DataFrame:
    """One row per detector (with a domain check) and source: ``in_domain`` (share passing,
    score and resize rule, with a bootstrap 95 % CI), ``in_domain_score_only``, ``flagged``
    (1 - in_domain), ``auroc`` (the check's score separating the detector's own test images
    from the source's, CI from ``n_bootstrap`` resamples; NaN on its own test split),
    ``accuracy_all`` and ``accuracy_in_domain`` (at the detector's threshold)."""
    rows = []
    for detector in detectors:
        if detector.domain is None:
            continue
        cells = [score_source(detector, s, device) for s in sources]
        own = next((c["_score"] for c in cells if c["own_test"]), None)
        for cell in cells:
            score = cell.pop("_score")
            cell["auroc"] = cell["auroc_low"] = cell["auroc_high"] = np.nan
            if own is not None and not cell["own_test"] and len(score) and len(own):
                labels = np.r_[np.zeros(len(own)), np.ones(len(score))]
                ci = ranking_ci(labels, np.r_[own, score], "auc", n_bootstrap)
                cell.update(auroc=ci.estimate, auroc_low=ci.low, auroc_high=ci.high)
            cell["flagged"] = 1 - cell["in_domain"]
            rows.append(cell)
    return pd.DataFrame(rows)


def describe(table: pd.DataFrame, coverage: float = 0.95, target: float = 0.90) -> str:
    """A sentence per detector: its own test images that pass, every other source flagged,
    and its accuracy on the images that pass against all."""
    lines = []
    for name, part in table.groupby("detector", sort=False):
        own = part[part["own_test"]]
        other = part[~part["own_test"]]
        text = f"**{name}**: "
        if len(own):
            o = own.iloc[0]
            text += (f"{o.in_domain:.1%} of its own test images pass (set to {coverage:.0%} on validation); "
                     f"accuracy {o.accuracy_in_domain:.1%} on those that pass, {o.accuracy_all:.1%} on all. ")
        if len(other):
            cells = "; ".join(f"{r.source} {r.flagged:.0%} flagged outside (AUROC {r.auroc:.2f})"
                              for r in other.itertuples())
            missed = other[other["flagged"] < target]
            text += cells + (f". Every other source at least {target:.0%} flagged." if missed.empty else
                             f". Below the {target:.0%} target: {', '.join(missed['source'])}.")
        lines.append(text)
    return "  \n".join(lines) if lines else "No detector with a domain check: retrain them (the check is fitted by training)."


def plot(table: pd.DataFrame):
    """Heat maps, detectors x sources: the share judged in domain, and the AUROC of the
    check's score between the detector's own test images and each source."""
    # colour says how right the check is: green where its own test images pass and where
    # other sources are flagged; the numbers are the shares judged in domain
    right = table.assign(right=np.where(table["own_test"], table["in_domain"], 1 - table["in_domain"]))
    colour = right.pivot(index="detector", columns="source", values="right")
    return heatmaps(table, (("in_domain", "share judged in domain (own test: ~0.95 wanted; others: low)", colour),
                            ("auroc", "AUROC, own test images vs this source", None)))
