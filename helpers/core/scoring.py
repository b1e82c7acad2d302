"""From a model to verdicts: logits of uint8 images, batch by batch on their device
(:func:`predict_logits`, what validation, :meth:`~helpers.core.detector.Detector.predict_proba`
and notebook 05 score with), and the decision threshold chosen on validation
(:func:`choose_threshold`). Split from :mod:`.detector`, the checkpoint's owner.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .accel import inference_autocast, inference_batch_size, to_float

#: The decision threshold of checkpoints saved before thresholds were chosen on validation.
DEFAULT_THRESHOLD = 0.5


def choose_threshold(labels: np.ndarray, p_fake: np.ndarray) -> tuple[float, float]:
    """The decision threshold on P(FAKE) that maximises accuracy on ``labels`` (0/1), and that
    accuracy. An image is called FAKE when ``p_fake >= threshold``.

    Candidates are 0.5 and the midpoints between consecutive distinct probabilities; among
    equally accurate ones the closest to 0.5 wins, so a detector whose best cut already lies
    at 0.5 keeps it, and a wide gap between the classes puts the cut where 0.5 falls in it.
    ``labels`` and ``p_fake`` are (N,) arrays; raises ValueError when they are empty.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    p_fake = np.asarray(p_fake, dtype=np.float64).ravel()
    if len(labels) == 0 or len(labels) != len(p_fake):
        raise ValueError(f"need as many labels as probabilities (got {len(labels)} and {len(p_fake)})")
    values = np.unique(p_fake)
    candidates = np.unique(np.concatenate([[DEFAULT_THRESHOLD], (values[1:] + values[:-1]) / 2,
                                           [values[0], np.nextafter(values[-1], np.inf)]]))
    # accuracy at each candidate from sorted scores: FAKE called right at or above the cut,
    # REAL right below it
    fake = np.sort(p_fake[labels == 1])
    real = np.sort(p_fake[labels == 0])
    fake_right = len(fake) - np.searchsorted(fake, candidates, side="left")
    real_right = np.searchsorted(real, candidates, side="left")
    accuracy = (fake_right + real_right) / len(labels)
    best = np.flatnonzero(accuracy == accuracy.max())
    pick = best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]
    return float(candidates[pick]), float(accuracy[pick])


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   batch_size: int | None = None, cpu_amp: bool = False) -> torch.Tensor:
    """Logits (N,) float32 of a uint8 (N, 3, H, W) tensor already on the model's device.

    One pass per image (no test-time mirror: every consumer scores as validation did), in fp32
    on every device; with ``cpu_amp`` in bfloat16 on CPUs that have it natively
    (:func:`helpers.core.accel.inference_autocast`).
    """
    device = images.device
    batch_size = inference_batch_size(device, batch_size)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size], mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with inference_autocast(device, cpu_amp):
            logits = model(x).float().flatten()
        out.append(logits)
    return torch.cat(out) if out else torch.zeros(0, device=device)
