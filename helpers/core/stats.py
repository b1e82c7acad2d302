"""Confidence intervals of proportions (accuracy, flag rates), of their differences, and of
the threshold-free ranking metrics (ROC AUC, average precision).

Shared by exploration (the colour-only baseline), evaluation and the explanations' checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and how the interval was obtained."""

    estimate: float
    low: float
    high: float
    method: str
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return (f"{self.estimate:.2%} [{self.low:.2%}, {self.high:.2%}] "
                f"({self.confidence:.0%} CI, n={self.n})")


def _as_binary(values, name: str = "values") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"{name}: empty, nothing to estimate")
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{name}: expected 0/1 outcomes (e.g. correct or flagged)")
    return values


def _mean_statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return samples[0].mean(axis=axis)


def _difference_statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return a.mean(axis=axis) - b.mean(axis=axis)


def proportion_ci(outcomes, n_resamples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """Proportion of 1s in ``outcomes`` (0/1) with a percentile bootstrap interval.

    Uses :func:`scipy.stats.bootstrap` (``method="percentile"``, the generator seeded with
    ``seed``, so the interval is the same on every run). The percentile method is used
    rather than BCa because BCa's jackknife grows with n squared (13 s at n = 20,000) and
    gives nothing for a mean of 0/1 outcomes that the percentile interval misses.

    When every outcome is equal (e.g. 100 % accuracy) the bootstrap distribution is a single
    point and its interval [1, 1] would claim certainty; the exact Clopper-Pearson interval
    (:meth:`scipy.stats.binomtest(...).proportion_ci`) is returned instead, and ``method``
    says so.
    """
    values = _as_binary(outcomes, "outcomes")
    n, estimate = values.size, float(values.mean())
    if values.min() == values.max():
        k = int(values.sum())
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
        return Interval(estimate, float(ci.low), float(ci.high),
                        "Clopper-Pearson exact (bootstrap degenerate: all outcomes equal)", n,
                        confidence)
    result = stats.bootstrap((values,), _mean_statistic, n_resamples=n_resamples,
                             confidence_level=confidence, method="percentile",
                             vectorized=True, random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), "percentile bootstrap", n, confidence)


def difference_ci(a, b, n_resamples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """Difference of the proportions of 1s, ``mean(a) - mean(b)``, for two independent samples.

    Each sample is resampled on its own (``paired=False``), seeded with ``seed``. When both
    samples are constant the bootstrap cannot say anything and the bounds are NaN.
    """
    a, b = _as_binary(a, "a"), _as_binary(b, "b")
    estimate = float(a.mean() - b.mean())
    if a.min() == a.max() and b.min() == b.max():
        return Interval(estimate, float("nan"), float("nan"),
                        "undefined (both samples constant)", a.size + b.size, confidence)
    result = stats.bootstrap((a, b), _difference_statistic, n_resamples=n_resamples,
                             confidence_level=confidence, method="percentile", paired=False,
                             vectorized=True, random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), "percentile bootstrap",
                    a.size + b.size, confidence)


#: The threshold-free ranking metrics :func:`ranking_ci` knows (FAKE = positive class).
RANKING_METRICS = ("auc", "average_precision")


def _weighted_ranking(w_fake: np.ndarray, w_real: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` for R weightings at once: ``w_fake``/``w_real`` are (R, U) weights of each
    distinct score (sorted in decreasing order) in each class.

    AUC is the Mann-Whitney probability that a fake outscores a real image (ties count half);
    average precision is scikit-learn's step sum over the distinct thresholds, sum of
    (recall_k - recall_k-1) * precision_k. Both equal scikit-learn's with ``sample_weight``.
    """
    total_fake, total_real = w_fake.sum(1), w_real.sum(1)
    if metric == "auc":
        real_below = total_real[:, None] - np.cumsum(w_real, axis=1)  # scores are decreasing
        return (w_fake * (real_below + 0.5 * w_real)).sum(1) / (total_fake * total_real)
    tp, fp = np.cumsum(w_fake, axis=1), np.cumsum(w_real, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    return (w_fake / total_fake[:, None] * precision).sum(1)


def ranking_ci(labels, scores, metric: str = "auc", n_resamples: int = 1000, confidence: float = 0.95,
               seed: int = 0) -> Interval:
    """ROC AUC or average precision of ``scores`` (N,) against 0/1 ``labels`` (N,), FAKE (1)
    positive, with a stratified percentile bootstrap interval.

    Each resample draws the REAL and the FAKE images separately with replacement, keeping both
    class sizes (a resample without one class has no AUC); the metric of every resample is
    computed at once from the draw counts (:func:`_weighted_ranking`, equal to scikit-learn's
    ``roc_auc_score``/``average_precision_score`` with the counts as ``sample_weight``).
    Raises ValueError for an unknown ``metric`` or labels of a single class.
    """
    if metric not in RANKING_METRICS:
        raise ValueError(f"unknown ranking metric {metric!r}; choose one of {list(RANKING_METRICS)}")
    labels = _as_binary(labels, "labels").astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    if min(n_real, n_fake) == 0:
        raise ValueError(f"{metric} needs both classes (got {n_real} REAL, {n_fake} FAKE)")
    values, group = np.unique(-scores, return_inverse=True)  # distinct scores, decreasing
    group = group.ravel()
    fake_groups, real_groups = group[labels == 1], group[labels == 0]

    def per_value(groups: np.ndarray, counts: np.ndarray) -> np.ndarray:  # (R, n) -> (R, U)
        rows = np.repeat(np.arange(len(counts)), groups.size)
        flat = np.bincount(rows * len(values) + np.tile(groups, len(counts)), counts.ravel(),
                           minlength=len(counts) * len(values))
        return flat.reshape(len(counts), len(values))

    estimate = _weighted_ranking(per_value(fake_groups, np.ones((1, n_fake))),
                                 per_value(real_groups, np.ones((1, n_real))), metric)[0]
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_resamples, 100):  # 100 resamples at a time bound the memory
        r = min(100, n_resamples - start)
        w_fake = per_value(fake_groups, rng.multinomial(n_fake, np.full(n_fake, 1 / n_fake), size=r))
        w_real = per_value(real_groups, rng.multinomial(n_real, np.full(n_real, 1 / n_real), size=r))
        draws.append(_weighted_ranking(w_fake, w_real, metric))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(draws), [alpha, 1 - alpha])
    return Interval(float(estimate), float(low), float(high), "stratified percentile bootstrap",
                    len(labels), confidence)


def stratified_subset(labels, max_images: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_images`` items with the class proportions of ``labels``
    (seeded, sorted); all indices when ``max_images`` is None or not smaller than the set."""
    labels = np.asarray(labels)
    if max_images is None or max_images >= labels.size:
        return np.arange(labels.size)

    chosen, _ = train_test_split(np.arange(labels.size), train_size=max_images, random_state=seed,
                                 stratify=labels)
    return np.sort(chosen)
