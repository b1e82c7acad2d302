"""Whether the maps point at what the detector uses: ROAD (Rong et al., ICML 2022) and the
confidence change when only the highlighted pixels are kept, against random maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from ..core.detector import Detector
from .cams import RANDOM, one_blas_thread, to_input

#: The faithfulness scores, as the tables and figures name them.
ROAD_COMBINED, ROAD_MORF, ROAD_LERF, CAM_X_IMAGE = "ROAD combined", "ROAD MoRF", "ROAD LeRF", "CAM x image"
#: Faithfulness metrics: column name -> (what it measures, whether higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    ROAD_COMBINED: ("(LeRF - MoRF) / 2, averaged over the removal fractions", True),
    ROAD_MORF: ("logit change after removing the most relevant pixels", False),
    ROAD_LERF: ("logit change after removing the least relevant pixels", True),
    CAM_X_IMAGE: ("logit change when the image is multiplied by the map", True),
}


def faithfulness_scores(detector: Detector, images: np.ndarray, classes: Iterable[int],
                        maps: Mapping[str, np.ndarray], percentiles: Sequence[int] = (20, 50, 80),
                        device: str | torch.device = "cpu", seed: int = 0,
                        tie_break: float = 1e-5) -> pd.DataFrame:
    """Per-image faithfulness of each set of maps (one row per image and method).

    ``maps`` maps a method name (include :data:`RANDOM` for the baseline) to (N, H, W) maps of
    the same ``images`` explaining ``classes``. Scores are changes of the explained class's
    logit (``BinaryClassifierOutputTarget``), as the library's metrics compute them:

    * ``ROAD MoRF`` / ``ROAD LeRF``: ``ROADMostRelevantFirstAverage`` / ``ROADLeastRelevantFirstAverage``
      over ``percentiles`` (percentile p removes the (100 - p) % most / least relevant pixels);
    * ``ROAD combined``: ``(LeRF - MoRF) / 2``, the formula of the library's ``ROADCombined``;
    * ``CAM x image``: ``CamMultImageConfidenceChange``.

    ROAD ranks pixels by thresholding at a percentile, so a map with many equal values (the
    zero region after Grad-CAM's ReLU) would remove far more or fewer pixels than asked. A tiny
    random jitter (``tie_break``, the same for every method) breaks the ties. The imputation
    noise is seeded per method, so the numbers do not depend on the order of ``maps``.
    """
    classes = np.asarray(list(classes), dtype=int).reshape(-1)
    model = detector.model
    inputs = to_input(images, detector.mean, detector.std, device)
    targets = [BinaryClassifierOutputTarget(int(c)) for c in classes]
    jitter = np.random.default_rng([seed, 1]).uniform(0, tie_break, images.shape[:3]).astype(np.float32)
    percentiles = list(percentiles)
    was_training = model.training
    model.eval()
    frames = []
    try:
        for name, cams in maps.items():
            cams = np.asarray(cams, dtype=np.float32)
            if cams.shape != images.shape[:3]:
                raise ValueError(f"maps of {name!r} have shape {cams.shape}, expected {images.shape[:3]}")
            ranked = cams + jitter
            torch.manual_seed(seed)
            with one_blas_thread():
                lerf = ROADLeastRelevantFirstAverage(percentiles)(inputs, ranked, targets, model)
                morf = ROADMostRelevantFirstAverage(percentiles)(inputs, ranked, targets, model)
                mult = CamMultImageConfidenceChange()(inputs, cams, targets, model)
            lerf, morf, mult = (a.reshape(-1) for a in (lerf, morf, mult))
            frames.append(pd.DataFrame({
                "image": np.arange(len(images)), "method": name, "class": classes,
                ROAD_COMBINED: (lerf - morf) / 2, ROAD_MORF: morf, ROAD_LERF: lerf,
                CAM_X_IMAGE: mult,
            }))
    finally:
        model.train(was_training)
    return pd.concat(frames, ignore_index=True)


def _bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int,
                       level: float) -> tuple[float, float]:
    draws = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def faithfulness_table(scores: pd.DataFrame, baseline: str = RANDOM, n_boot: int = 2000,
                       level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Summary of :func:`faithfulness_scores`: mean with a bootstrap CI per method and metric,
    and the paired difference to the ``baseline`` maps on the same images.

    ``better_than_random`` is ``"better"`` when the CI of the (direction-corrected) difference
    lies above 0, ``"worse"`` when below, and ``"no better"`` when it contains 0.
    """
    rng = np.random.default_rng(seed)
    wide = {m: g.set_index("image").sort_index() for m, g in scores.groupby("method", sort=False)}
    if baseline not in wide:
        raise KeyError(f"no {baseline!r} maps among {list(wide)}: add the random baseline")
    base = wide[baseline]
    rows = []
    for method, frame in wide.items():
        for metric, (meaning, higher) in METRICS.items():
            values = frame[metric].to_numpy(np.float64)
            low, high = _bootstrap_mean_ci(values, rng, n_boot, level)
            row = {"method": method, "metric": metric, "better_if": "higher" if higher else "lower",
                   "mean": values.mean(), "ci_low": low, "ci_high": high, "n_images": len(values),
                   "meaning": meaning}
            if method == baseline:
                row.update(diff_vs_random=0.0, diff_ci_low=np.nan, diff_ci_high=np.nan,
                           better_than_random="(baseline)")
            else:
                sign = 1.0 if higher else -1.0
                diff = sign * (values - base[metric].to_numpy(np.float64))
                d_low, d_high = _bootstrap_mean_ci(diff, rng, n_boot, level)
                verdict = "better" if d_low > 0 else "worse" if d_high < 0 else "no better"
                row.update(diff_vs_random=diff.mean(), diff_ci_low=d_low, diff_ci_high=d_high,
                           better_than_random=verdict)
            rows.append(row)
    columns = ["method", "metric", "better_if", "mean", "ci_low", "ci_high", "diff_vs_random",
               "diff_ci_low", "diff_ci_high", "better_than_random", "n_images", "meaning"]
    return pd.DataFrame(rows)[columns]
