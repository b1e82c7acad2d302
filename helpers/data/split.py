"""The train/val/test split of a dataset and what is removed from it: stratified and seeded,
both classes in every split whenever the stated minimum is met, evaluation images whose pixels
repeat an earlier split removed, and contradictions (the same pixels under both labels)
removed from every split.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from ..core.repro import fingerprint_bytes
from .datasets import CLASS_NAMES, DROPPED, SPLITS, DatasetError

#: The fewest images of each class a dataset needs: one per split without official folders;
#: with train/ and test/ folders, one in test/ and two in train/ (one is carved off for val).
MIN_PER_CLASS = {"random": {"train": 3}, "official": {"train": 2, "test": 1}}


def split_counts(labels: np.ndarray, split: np.ndarray) -> dict[str, dict[str, int]]:
    """Images per split and class, ``{split: {class: n}}`` (removed duplicates not counted)."""
    return {s: {c: int(((split == i) & (labels == k)).sum()) for k, c in enumerate(CLASS_NAMES)}
            for i, s in enumerate(SPLITS)}


def minimum_text(official: bool) -> str:
    """The true minimum per class, in words."""
    if official:
        return ("with train/ and test/ folders, every class needs at least 1 image in test/ and 2 "
                "in train/ (one of them becomes validation)")
    return "without train/ and test/ folders, every class needs at least 3 images (one per split)"


def check_counts(counts: dict[str, dict[str, int]], where: str,
                 splits: tuple[str, ...] = SPLITS, official: bool | None = None,
                 removed: int = 0) -> None:
    """Raise :class:`DatasetError` when one of ``splits`` lacks a class: a detector trained,
    selected or tested on one class says nothing. The message states the true minimum (both
    rules when ``official`` is unknown) and, with ``removed``, that removals emptied it."""
    empty = [f"{s} has no {c} image" for s in splits for c in CLASS_NAMES
             if not counts.get(s, {}).get(c)]
    if empty:
        table = "; ".join(f"{s} " + " / ".join(f"{counts.get(s, {}).get(c, 0):,} {c}"
                                               for c in CLASS_NAMES) for s in SPLITS)
        rules = ([minimum_text(official)] if official is not None
                 else [minimum_text(True), minimum_text(False)])
        cause = (f" after {removed:,} images were removed as repeats or contradictions (see the data "
                 "report)" if removed else "")
        raise DatasetError(
            f"{where}: {', '.join(empty)}{cause} ({table}). {'; '.join(rules).capitalize()}. "
            "Nothing was trained or saved.")


def _stratified(pool: np.ndarray, labels: np.ndarray, size: float, seed: int):
    """sklearn's stratified split of ``pool``; a fraction too small to hold one image of
    each class becomes exactly one of each (tiny datasets), other splits are unchanged."""

    classes = len(np.unique(labels[pool]))
    test_size = classes if np.ceil(size * len(pool)) < classes else size
    return train_test_split(pool, test_size=test_size, random_state=seed, stratify=labels[pool])


def _fill(split: np.ndarray, labels: np.ndarray, seed: int, targets: tuple[int, ...]) -> None:
    """Give each split of ``targets`` that lacks a class one image of it, from train (where
    stratified rounding left the whole class of a small, imbalanced dataset), when train keeps
    at least one. Runs only where a class is missing: other splits are unchanged."""
    rng = np.random.default_rng(seed)
    for target in targets:
        for label in np.unique(labels):
            if ((split == target) & (labels == label)).any():
                continue
            donors = np.flatnonzero((split == 0) & (labels == label))
            if len(donors) >= 2:
                split[rng.choice(donors)] = target


def assign_split(labels: np.ndarray, official: np.ndarray | None, seed: int,
                 val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test), stratified by label and deterministic in ``seed``.

    With an official split, its test part is kept and validation is carved from its train
    part; otherwise train/val/test are drawn from everything. Every split gets at least one
    image of each class whenever :data:`MIN_PER_CLASS` is met (a 4-real, 40-fake set too);
    raises ValueError when sklearn cannot stratify at all.
    """
    split = np.zeros(len(labels), dtype=np.int8)
    index = np.arange(len(labels))
    if official is not None:
        split[official == "test"] = 2
        pool = index[official != "test"]
    else:
        pool, test = _stratified(index, labels, test_fraction, seed)
        split[test] = 2
    val_size = val_fraction / (1 - (0 if official is not None else test_fraction))
    _, val = _stratified(pool, labels, val_size, seed)
    split[val] = 1
    _fill(split, labels, seed, (1,) if official is not None else (2, 1))
    return split


def _contradictions(hashes: np.ndarray, labels: np.ndarray) -> set[str]:
    """Pixel hashes that occur under both labels."""
    first: dict[str, int] = {}
    both = set()
    for h, label in zip(hashes, labels):
        if first.setdefault(h, label) != label:
            both.add(h)
    return both


def remove_leakage(images: np.ndarray, labels: np.ndarray, split: np.ndarray,
                   files: np.ndarray) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Drop images no detector can get right and val/test images already seen.

    Images whose decoded pixels occur under both labels are a contradiction: every copy is
    removed from whatever split holds it (a clean test set must not hold them, and training
    on them teaches nothing). Of the others, a val/test image whose pixels also occur in an
    earlier split is removed; duplicates inside one split are reported (and kept).
    Returns the new split codes and ``(file, reason)`` rows for the report.
    """
    hashes = np.array([fingerprint_bytes(img) for img in images])
    split = split.copy()
    rows: list[tuple[str, str]] = []
    clash = _contradictions(hashes, labels)
    members: dict[str, list[int]] = {}
    for i in np.flatnonzero(np.isin(hashes, list(clash))) if clash else []:
        members.setdefault(hashes[i], []).append(i)
    for group in members.values():
        named = ", ".join(f"{files[j]} ({CLASS_NAMES[labels[j]]})" for j in group)
        for i in group:
            rows.append((files[i], (f"removed from {SPLITS[split[i]]}: contradiction, pixels "
                                   f"identical under both labels: {named}")))
        split[group] = DROPPED
    first_seen: dict[str, int] = {}
    # visit train, then val, then test: an evaluation image is kept only if new
    for i in np.lexsort((np.arange(len(split)), split)):
        h = hashes[i]
        if h in clash:
            continue
        if h not in first_seen:
            first_seen[h] = i
            continue
        j = first_seen[h]
        if split[i] > split[j]:
            rows.append((files[i], (f"removed from {SPLITS[split[i]]}: pixels identical to "
                                    f"{SPLITS[split[j]]} file {files[j]}")))
            split[i] = DROPPED
        else:
            rows.append((files[i], f"duplicate within {SPLITS[split[i]]} of {files[j]}"))
    return split, rows
