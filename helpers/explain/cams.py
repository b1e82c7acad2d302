"""Grad-CAM and its relatives (jacobgil/pytorch-grad-cam) on a detector: maps, outcome groups,
class averages, and the two views of ``two_scale``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from threadpoolctl import threadpool_limits

from ..core import paths
from ..core.accel import images_to_device, to_float
from ..core.detector import Detector
from ..core.models import cam_target_layer
from ..core.repro import atomic_path, write_json
from ..data.datasets import CLASS_NAMES

#: CAM methods offered; Grad-CAM first. EigenCAM ignores the target (first principal component
#: of the activations), so it shows what the layer reacts to, not the evidence for one class.
METHODS: dict[str, type[BaseCAM]] = {
    "Grad-CAM": GradCAM,
    "Grad-CAM++": GradCAMPlusPlus,
    "EigenCAM": EigenCAM,
}


#: Methods whose map does not depend on the explained class.
CLASS_AGNOSTIC = frozenset({"EigenCAM"})


#: Name of the random-map baseline in faithfulness tables.
RANDOM = "random"


#: Outcome groups of the test images (positive class = FAKE).
OUTCOMES = {
    "TP": "true positives (FAKE called FAKE)",
    "TN": "true negatives (REAL called REAL)",
    "FP": "false positives (REAL called FAKE)",
    "FN": "false negatives (FAKE called REAL)",
}


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
             device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> the normalised (N, 3, H, W) float batch the model sees."""
    device = torch.device(device)
    stats = [torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std)]
    return to_float(images_to_device(images, device), *stats)


def _target_layer(model: torch.nn.Module, target_layer: torch.nn.Module | None) -> torch.nn.Module:
    if target_layer is not None:
        return target_layer

    return cam_target_layer(model)


def one_blas_thread():
    """The library works image by image with tiny NumPy/SciPy problems (EigenCAM's SVD of a
    (h*w, channels) matrix, ROAD's sparse imputation): OpenBLAS threads only add overhead,
    ~100x on a busy 2-core machine (190 ms instead of 2 ms per SVD). torch is not affected."""
    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def _gradients_from(model: torch.nn.Module, layer: torch.nn.Module) -> Iterator[bool]:
    """Let only ``layer``'s weights require gradients while a CAM is computed.

    The CAM needs the gradient at the layer's output, nothing below it; with the earlier
    weights frozen the backward pass stops there: the same maps in about half the time on a
    CPU (measured for ``fast`` and ``resnet18``). Yields False when the layer has no weights:
    then the input must require grad instead.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    own = list(layer.parameters())
    try:
        if own:
            for p, _ in flags:
                p.requires_grad_(False)
            for p in own:
                p.requires_grad_(True)
        yield bool(own)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None


def compute_cams(model: torch.nn.Module, images: np.ndarray, classes: Iterable[int],
                 mean: Sequence[float], std: Sequence[float], method: str = "Grad-CAM",
                 target_layer: torch.nn.Module | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 256) -> np.ndarray:
    """CAM maps (N, H, W) in [0, 1] explaining ``classes[i]`` (0 REAL, 1 FAKE) for image ``i``.

    ``images`` are uint8 (N, H, W, 3); the maps have the input's height and width. The CAM
    object is created once and used as a context manager; each image gets its own target.
    Gradients are turned on here, so a call from inside ``torch.no_grad()`` or
    ``torch.inference_mode()`` (an inference loop) gives the same maps as any other; a model
    whose weights were made inside ``inference_mode`` raises RuntimeError saying what to do.
    """
    if method not in METHODS:
        raise KeyError(f"unknown CAM method {method!r}; choose one of {list(METHODS)}")
    classes = np.asarray(list(classes), dtype=int).reshape(-1)
    if len(classes) != len(images):
        raise ValueError(f"{len(images)} images but {len(classes)} classes: give one class per image")
    if not set(np.unique(classes)) <= {0, 1}:
        raise ValueError("classes must be 0 (REAL) or 1 (FAKE)")
    if any(p.is_inference() for p in model.parameters()):
        raise RuntimeError("Grad-CAM needs gradients, but this model's weights were created "
                           "inside torch.inference_mode(): load or build the model outside it "
                           "(torch.inference_mode() around the CAM call itself is fine).")
    layer = _target_layer(model, target_layer)
    out = np.empty(images.shape[:3], dtype=np.float32)
    was_training = model.training
    try:
        # the library backpropagates: gradients on whatever mode the caller is in
        with torch.inference_mode(False), torch.enable_grad(), one_blas_thread(), \
                _gradients_from(model, layer) as layer_has_weights, \
                METHODS[method](model=model, target_layers=[layer]) as cam:
            for start in range(0, len(images), batch_size):
                stop = start + batch_size
                batch = to_input(images[start:stop], mean, std, device)
                if not layer_has_weights:  # keep a graph through the layer all the same
                    batch.requires_grad_(True)
                targets = [BinaryClassifierOutputTarget(int(c)) for c in classes[start:stop]]
                out[start:stop] = cam(input_tensor=batch, targets=targets)
    finally:
        model.train(was_training)
    return out


def explain(detector: Detector, images: np.ndarray, classes: Iterable[int],
            method: str = "Grad-CAM", device: str | torch.device = "cpu") -> np.ndarray:
    """:func:`compute_cams` of ``detector``'s model with its own normalisation."""
    return compute_cams(detector.model, images, classes, detector.mean, detector.std, method, device=device)


def compute_all(detector: Detector, images: np.ndarray, classes: Iterable[int],
                methods: Iterable[str] = tuple(METHODS), device: str | torch.device = "cpu",
                target_layer: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """``{method: maps}`` for several methods on the same images and classes."""
    classes = np.asarray(list(classes), dtype=int)
    return {m: compute_cams(detector.model, images, classes, detector.mean, detector.std, m,
                            target_layer=target_layer, device=device) for m in methods}


def cam_map_size(model: torch.nn.Module, image_size: int, target_layer: torch.nn.Module | None = None,
                 device: str | torch.device = "cpu") -> tuple[int, int]:
    """(height, width) of the target layer's map for a square input of ``image_size``."""
    layer = _target_layer(model, target_layer)
    seen: list[tuple[int, int]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[-2:])))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        handle.remove()
        model.train(was_training)
    return seen[0]


def random_maps(n: int, image_size: int, map_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random baseline: uniform noise at the CAM's resolution, scaled up as the library scales CAMs.

    Same spatial smoothness as a real CAM of that layer, no information about the image.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(n, *map_size)).astype(np.float32)
    return scale_cam_image(coarse, (image_size, image_size))


def outcomes(labels: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """TP / TN / FP / FN per image (positive class = FAKE; predicted FAKE when p >= threshold)."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(p_fake) >= threshold
    return np.select([labels & pred, ~labels & ~pred, ~labels & pred], ["TP", "TN", "FP"], "FN")


def pick_examples(groups: np.ndarray, n_per_group: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Up to ``n_per_group`` indices of each outcome, drawn at random (seeded), in index order."""
    rng = np.random.default_rng(seed)
    picked = {}
    for name in OUTCOMES:
        members = np.flatnonzero(groups == name)
        take = min(n_per_group, len(members))
        picked[name] = np.sort(rng.choice(members, size=take, replace=False)) if take else members
    return picked


def outcome_counts(groups: np.ndarray) -> pd.DataFrame:
    """Images per outcome group, with the group's meaning."""
    counts = pd.Series(groups).value_counts().reindex(list(OUTCOMES), fill_value=0)
    return pd.DataFrame({"meaning": list(OUTCOMES.values()), "images": counts.to_numpy()},
                        index=pd.Index(list(OUTCOMES), name="outcome"))


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """About ``n`` indices, half from each class where possible (seeded), in index order."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in (0, 1):
        members = np.flatnonzero(np.asarray(labels) == k)
        parts.append(rng.choice(members, size=min(len(members), (n + 1 - k) // 2), replace=False))
    return np.sort(np.concatenate(parts))


_CELLS = (("top-left", "top", "top-right"), ("left", "centre", "right"),
          ("bottom-left", "bottom", "bottom-right"))


def region_shares(cam: np.ndarray) -> dict[str, float | str]:
    """Where a map's mass lies: the central square (a quarter of the area), the outer ring
    (an eighth of the side wide) and the 3x3 cell holding its peak.

    Also returns what a uniform map would give, to compare against.
    """
    cam = np.asarray(cam, dtype=np.float64)
    h, w = cam.shape
    total = cam.sum() or 1.0
    centre = cam[h // 4: h - h // 4, w // 4: w - w // 4]
    ring = max(1, min(h, w) // 8)
    inner = cam[ring: h - ring, ring: w - ring]
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return {
        "centre_share": float(centre.sum() / total),
        "centre_uniform": centre.size / cam.size,
        "border_share": float((cam.sum() - inner.sum()) / total),
        "border_uniform": 1 - inner.size / cam.size,
        "peak": _CELLS[min(2, row * 3 // h)][min(2, col * 3 // w)],
    }


def class_average_maps(maps: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Mean map per true class (``REAL``/``FAKE``); classes without images are left out."""
    labels = np.asarray(labels)
    return {name: maps[labels == k].mean(axis=0) for k, name in enumerate(CLASS_NAMES)
            if (labels == k).any()}


def peak_border_fraction(maps: np.ndarray) -> float:
    """Share of individual maps whose maximum lies in the outer ring (an eighth of the side)."""
    n, h, w = maps.shape
    ring = max(1, min(h, w) // 8)
    rows, cols = np.unravel_index(maps.reshape(n, -1).argmax(axis=1), (h, w))
    on_border = (rows < ring) | (rows >= h - ring) | (cols < ring) | (cols >= w - ring)
    return float(on_border.mean()) if n else float("nan")


#: Row label of :func:`view_table` for the two views together; :func:`view_alone` for one.
BOTH_VIEWS = "both views"


def view_alone(view: str) -> str:
    """Row label of :func:`view_table` for one view (``global`` or ``local``) deciding alone."""
    return f"{view} view alone"


def has_two_views(model: torch.nn.Module) -> bool:
    """Whether ``model`` sums a global and a local view (``two_scale``), so each view's share
    of the logit can be read on its own."""
    return hasattr(model, "view_logits") and hasattr(model, "local_evidence")


@torch.no_grad()
def _two_view_batches(detector: Detector, images: np.ndarray, device,
                      batch_size: int, read: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``read(batch)`` for the normalised images of a two-view model in eval mode, concatenated."""
    model = detector.model
    if not has_two_views(model):
        raise TypeError(f"{type(model).__name__} has one view; only two_scale splits its logit")
    if len(images) == 0:
        raise ValueError("no images given: pass at least one (N, H, W, 3) uint8 image")
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([
            read(to_input(images[start:start + batch_size], detector.mean, detector.std, device)).float().cpu().numpy()
            for start in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def view_logits(detector: Detector, images: np.ndarray,
                device: str | torch.device = "cpu", batch_size: int = 32) -> pd.DataFrame:
    """Each image's logit split by view: columns ``global``, ``local`` and ``total`` (their sum)."""
    logits = _two_view_batches(detector, images, device, batch_size,
                               lambda batch: torch.cat(detector.model.view_logits(batch), dim=1))
    return pd.DataFrame({"global": logits[:, 0], "local": logits[:, 1], "total": logits.sum(1)})


def view_table(views: pd.DataFrame, labels: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """How each view decides on its own (its share's sign against the threshold's logit) and
    how large its share is, next to the two together."""
    cut = float(np.log(threshold / (1 - threshold)))
    labels = np.asarray(labels).astype(bool)
    rows = {}
    for column in ("global", "local", "total"):
        decided = views[column].to_numpy() >= cut
        rows[BOTH_VIEWS if column == "total" else view_alone(column)] = {
            "accuracy": float((decided == labels).mean()),
            "errors": int((decided != labels).sum()),
            "mean |share of the logit|": float(views[column].abs().mean()),
        }
    table = pd.DataFrame(rows).T
    table["errors"] = table["errors"].astype(int)
    return table


def local_evidence_maps(detector: Detector, images: np.ndarray,
                        device: str | torch.device = "cpu", batch_size: int = 32) -> np.ndarray:
    """The local view's signed neighbourhood scores (:meth:`TwoScaleNet.local_evidence`),
    (N, H, W) at the images' size: nearest-neighbour upsampled, so each block is one score."""
    def read(batch: torch.Tensor) -> torch.Tensor:
        scores = detector.model.local_evidence(batch)[:, None]
        return torch.nn.functional.interpolate(scores, size=images.shape[1:3]).squeeze(1)

    return _two_view_batches(detector, images, device, batch_size, read)


def save_results(dataset: str, table: pd.DataFrame, summary: Mapping) -> tuple[Path, Path]:
    """``results/<dataset>/gradcam/faithfulness.csv`` and ``summary.json`` (atomically)."""

    folder = paths.results_dir(dataset, "gradcam")
    csv = folder / "faithfulness.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return csv, write_json(folder / "summary.json", dict(summary))
