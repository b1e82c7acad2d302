"""What the classifier hands back: one row per image (:func:`verdict_table`, its ``COLUMNS``),
its lines on the terminal (:func:`print_table`, :func:`domain_summary`) and its CSV
(:func:`write_csv`). Split from :mod:`.predict`, which decodes and scores; the app shows the
same table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.detector import Detector
from ..core.paths import printable
from ..core.repro import atomic_path
from ..data.datasets import CLASS_NAMES

COLUMNS = ["file", "p_fake", "label", "error", "note", "in_domain", "domain_score"]


#: What a verdict outside the detector's domain is worth (the app shows it next to it).
OUTSIDE = "outside what this detector was trained on — not reliable"


def no_verdict(value: float) -> str:
    """The error of an image the detector scored NaN or infinite: a broken model, no verdict."""
    return (f"no verdict: the detector returned {value} instead of a probability (a broken model, "
            "e.g. one left by a float16 run that overflowed); retrain it or use another checkpoint")


def verdict_table(names: Sequence[str], p_fake: np.ndarray, errors: Sequence[str | None],
           threshold: float, notes: Sequence[str | None] | None = None,
           domain: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per image; an image without an error whose score is not finite gets the error
    :func:`no_verdict` (never a label: NaN >= threshold would read as REAL). ``domain``: the
    domain check's (score, in_domain) per image (:func:`helpers.tools.predict.classify_decoded`; None: unknown)."""
    p_fake = np.asarray(p_fake, dtype=np.float64)
    errors = [e if e or np.isfinite(p) else no_verdict(p) for p, e in zip(p_fake, errors)]
    p_fake = np.where(np.isfinite(p_fake), p_fake, np.nan)
    labels = [None if e else CLASS_NAMES[int(p >= threshold)] for p, e in zip(p_fake, errors)]
    notes = list(notes) if notes is not None else [None] * len(names)
    score, inside = domain if domain is not None else (np.full(len(names), np.nan),
                                                       np.full(len(names), None, dtype=object))
    inside = [None if e or v is None else bool(v) for v, e in zip(inside, errors)]
    return pd.DataFrame({"file": [printable(n) for n in names], "p_fake": p_fake,
                         "label": labels, "error": list(errors), "note": notes,
                         "in_domain": pd.Series(inside, dtype=object), "domain_score": score},
                        columns=COLUMNS)


def print_table(table: pd.DataFrame, stream=None) -> None:
    """Human-readable output: one line per classified image (and its note, if any), then the
    failures."""
    stream = stream or sys.stdout
    good = table[table["error"].isna()]
    bad = table[table["error"].notna()]
    if len(good):
        print(f"{'P(AI)':>7}  {'label':<5}  file", file=stream)
        for row in good.itertuples():
            outside = "  [outside the training domain]" if row.in_domain is False else ""
            print(f"{row.p_fake:7.4f}  {row.label:<5}  {row.file}{outside}", file=stream)
            if isinstance(row.note, str):
                print(f"{'':7}  {'':<5}  note: {row.note}", file=stream)
    if len(bad):
        print(f"\n{len(bad)} of {len(table)} could not be classified:", file=stream)
        for row in bad.itertuples():
            print(f"  {row.file}: {row.error}", file=stream)


def domain_summary(table: pd.DataFrame, detector: Detector) -> str:
    """One line: how many classified images were outside the detector's domain."""
    good = table[table["error"].isna()]
    if detector.domain is None:
        return f"domain check: {detector.domain_status}"
    outside = int(sum(v is False for v in good["in_domain"]))
    return (f"domain check: {outside} of {len(good)} classified images outside what this detector "
            f"was trained on{' (their verdicts are not reliable)' if outside else ''}")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """The table as CSV at ``path`` (atomically: an interrupted write leaves no half file)."""
    with atomic_path(Path(path).expanduser()) as tmp:
        table.to_csv(tmp, index=False)
