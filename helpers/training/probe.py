"""A linear probe on frozen pretrained features (``lite0_probe``): the features once, then
logistic regression.

The protocol of Ojha et al. (CVPR 2023, "Towards Universal Fake Image Detectors that
Generalize Across Generative Models"): a backbone that never saw the task, frozen, and a
linear classifier on its pooled features. A frozen backbone gives the same features in every
epoch, so they are computed once and the classifier is fitted by scikit-learn's
``LogisticRegression`` (L2, lbfgs) on standardised features, its strength ``C`` chosen on the
validation split. The scaler is folded into the model's linear head, so the result is an
ordinary :class:`~helpers.core.detector.Detector` that ``predict``, the app and Grad-CAM use
like any other.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..core.accel import inference_autocast, inference_batch_size, to_float

#: Inverse regularisation strengths tried (scikit-learn's ``C``), chosen on validation.
PROBE_C = (0.01, 0.1, 1.0)


@torch.inference_mode()
def pooled_features(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    batch_size: int | None = None, cpu_amp: bool = False) -> np.ndarray:
    """(N, F) float32 features ``model.features`` gives uint8 (N, 3, H, W) ``images`` (on the
    model's device), normalised by ``mean``/``std``; the model is put in eval mode. Computed in
    the precision the fitted probe is then validated and scored in (fp32, or bfloat16 with
    ``cpu_amp`` on a CPU that has it: :func:`helpers.core.accel.inference_autocast`)."""
    model.eval()
    batch_size = inference_batch_size(images.device, batch_size)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size], mean, std)
        with inference_autocast(images.device, cpu_amp):
            out.append(model.features(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _bce(labels: np.ndarray, p_fake: np.ndarray) -> float:
    p = np.clip(p_fake, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_linear_head(head: nn.Linear, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                    seed: int = 0, strengths: tuple[float, ...] = PROBE_C) -> list[dict]:
    """Fit logistic regression on ``train`` = (features (N, F), labels (N,) 0/1) for each ``C``
    in ``strengths``, keep the one best on ``val`` (accuracy, then loss) and write it into
    ``head`` (a Linear(F, 1)) with the standardisation folded in. Returns one row per ``C``:
    ``C``, ``val_acc``, ``val_loss``, ``seconds``, ``chosen``."""
    (f_train, y_train), (f_val, y_val) = train, val
    scaler = StandardScaler().fit(f_train)
    z_train, z_val = scaler.transform(f_train), scaler.transform(f_val)
    rows, fits = [], []
    for strength in strengths:
        started = time.perf_counter()
        clf = LogisticRegression(C=strength, max_iter=2000, random_state=seed).fit(z_train, y_train)
        p_val = clf.predict_proba(z_val)[:, 1]
        rows.append({"C": strength, "val_acc": float(((p_val >= 0.5) == y_val).mean()),
                     "val_loss": _bce(y_val, p_val), "seconds": time.perf_counter() - started})
        fits.append(clf)
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_acc"], -rows[i]["val_loss"]))
    for i, row in enumerate(rows):
        row["chosen"] = i == best
    clf = fits[best]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weight = clf.coef_[0] / scale
    bias = clf.intercept_[0] - float(np.dot(weight, scaler.mean_))
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype)[None])
        head.bias.fill_(float(bias))
    return rows
