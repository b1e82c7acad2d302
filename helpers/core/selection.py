"""How a detector is chosen: the validation rule (best accuracy, ties to the lower loss) and
the measured robustness that picks the one ``predict`` and the app use. Choices are made on
validation figures only, never on test ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def validation_rank(metrics: Mapping[str, float]) -> tuple[float, float]:
    """Sort key of the validation rule: best accuracy, ties broken by the lower loss.

    Used to pick the saved epoch of a run and the best detector of a dataset. Checked against
    the alternatives on the shoes (docs/shoes-detector-study.md): half an error apart.
    """
    return float(metrics.get("val_acc", 0.0)), -float(metrics.get("val_loss", np.inf))


def has_validation(metrics: Mapping[str, float] | None) -> bool:
    """Whether ``metrics`` carry a finite validation accuracy (``val_acc``), the figure the
    validation rule ranks by; older records without one are listed, never ranked."""
    value = (metrics or {}).get("val_acc")
    try:
        return value is not None and bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def best_by_validation(candidates: Iterable[T], metrics: Callable[[T], Mapping[str, float] | None]) -> T | None:
    """The one place that chooses "the best detector": of ``candidates``, the one ranked first
    by :func:`validation_rank` among those whose ``metrics(candidate)`` has validation figures
    (:func:`has_validation`); ties go to the first listed. None when none has them: never a
    fallback on test figures (the project's rule: choices on validation, never on test).

    Used by :func:`best_path` (a dataset's checkpoints), notebook 05's
    :func:`helpers.evaluation.compare.best_result`, the cross-dataset specialists and the
    results index (:mod:`helpers.report`).
    """
    ranked = [c for c in candidates if has_validation(metrics(c))]
    return max(ranked, key=lambda c: validation_rank(metrics(c))) if ranked else None


def is_robust(config: Mapping[str, Any] | None) -> bool:
    """Whether a detector trained with degradations (``TrainConfig.degrade``, issue #34)."""
    return (config or {}).get("degrade", "none") not in ("none", None, "")


def kind_note(config: Mapping[str, Any] | None, robustness: Mapping[str, Any] | None = None) -> str:
    """How ``predict`` and the app name a detector: robust (the recipe) or specialist, and its
    worst case under notebook 05's protocol on validation when that was measured."""
    kind = (f"robust: trained with degradations {config['degrade']!r}" if is_robust(config)
            else "specialist: trained on clean images only")
    if robustness_key(robustness) is not None:
        kind += (f"; on validation {robustness['clean_accuracy']:.1%} clean, worst "
                 f"{robustness['worst_accuracy']:.1%} under {robustness.get('worst_condition', '?')}")
    return kind


def robustness_key(robustness: Mapping[str, Any] | None) -> float | None:
    """The worst accuracy, clean included, over notebook 05's protocol on validation (the
    checkpoint's ``robustness``); None when it was not measured (older checkpoints) or is not
    a finite number."""
    try:
        values = [float(robustness["worst_accuracy"]), float(robustness["clean_accuracy"])]
    except (TypeError, KeyError, ValueError):
        return None
    return min(values) if np.isfinite(values).all() else None


#: Worst cases closer than this to the best one are treated as equal when choosing the users'
#: default: about one standard error of an accuracy near 92 % on the 2,000 validation images
#: the protocol scores (sqrt(0.92 * 0.08 / 2000) = 0.6 pp), so noise alone never decides.
WORST_CASE_MARGIN = 0.01


def most_robust(candidates: Iterable[T], robustness: Callable[[T], Mapping[str, Any] | None],
                metrics: Callable[[T], Mapping[str, float] | None]) -> T | None:
    """The detector users get (``predict``, the app, notebooks 05's curves and 06): among
    ``candidates`` whose worst case on validation (:func:`robustness_key`) is within
    :data:`WORST_CASE_MARGIN` of the best one, the best by :func:`validation_rank`; ties go
    to the first listed. None when no candidate was measured."""
    measured = [(c, robustness_key(robustness(c))) for c in candidates]
    measured = [(c, key) for c, key in measured if key is not None]
    if not measured:
        return None
    best = max(key for _, key in measured)
    near = [c for c, key in measured if key >= best - WORST_CASE_MARGIN]
    return max(near, key=lambda c: validation_rank(metrics(c) or {}))
