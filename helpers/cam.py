"""Grad-CAM and friends for the one-logit detector, with pytorch-grad-cam, and their faithfulness.

Everything here goes through the ``grad-cam`` package (``pytorch_grad_cam``); nothing is a
hand-written CAM. The details that are easy to get wrong are fixed in one place:

* **One target per image.** The library sums ``target(output)`` over the pairs of ``zip(targets,
  outputs)``, so a single target in a batch silently explains only the first image.
  :func:`compute_cams` always passes one :class:`BinaryClassifierOutputTarget` per image.
* **One-logit model.** The detector returns one logit (positive = FAKE, label 1).
  ``BinaryClassifierOutputTarget(1)`` explains FAKE (the logit), ``BinaryClassifierOutputTarget(0)``
  explains REAL (minus the logit); ``ClassifierOutputTarget`` would be wrong here.
* **Target layer.** The last layer that still has a spatial map (>= 4x4 at 32x32 inputs), chosen
  per architecture by :func:`helpers.models.cam_target_layer`.
* **Created once.** The CAM object is a context manager (its hooks are removed on exit) and is
  created once per call, not per image.
* **Same inputs as inference.** uint8 images are normalised with the checkpoint's
  ``info["mean"]``/``info["std"]`` by :func:`helpers.accel.to_float`, as inference does.

Faithfulness uses the library's metrics: ROAD (remove-and-debias: the most relevant or least
relevant pixels are replaced by noisy linear imputation and the change in the explained class's
logit is measured) and the confidence change when the image is multiplied by the map. Each map
is compared with a random map of the same spatial resolution on the same images.
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
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from threadpoolctl import threadpool_limits

from . import paths
from .accel import images_to_device, to_float
from .data import CLASS_NAMES

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
#: Faithfulness metrics: column name -> (what it measures, whether higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "ROAD combined": ("(LeRF - MoRF) / 2, averaged over the removal fractions", True),
    "ROAD MoRF": ("logit change after removing the most relevant pixels", False),
    "ROAD LeRF": ("logit change after removing the least relevant pixels", True),
    "CAM x image": ("logit change when the image is multiplied by the map", True),
}


# --------------------------------------------------------------------------- inputs and maps

def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
             device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> the normalised (N, 3, H, W) float batch the model sees."""
    device = torch.device(device)
    stats = [torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std)]
    return to_float(images_to_device(images, device), *stats)


def _target_layer(model: torch.nn.Module, target_layer: torch.nn.Module | None) -> torch.nn.Module:
    if target_layer is not None:
        return target_layer
    from .models import cam_target_layer

    return cam_target_layer(model)


def _one_blas_thread():
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
        with torch.inference_mode(False), torch.enable_grad(), _one_blas_thread(), \
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


def explain(model: torch.nn.Module, info: Mapping, images: np.ndarray, classes: Iterable[int],
            method: str = "Grad-CAM", device: str | torch.device = "cpu") -> np.ndarray:
    """:func:`compute_cams` with the normalisation recorded in a checkpoint's ``info``."""
    return compute_cams(model, images, classes, info["mean"], info["std"], method, device=device)


def compute_all(model: torch.nn.Module, images: np.ndarray, classes: Iterable[int], info: Mapping,
                methods: Iterable[str] = tuple(METHODS), device: str | torch.device = "cpu",
                target_layer: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """``{method: maps}`` for several methods on the same images and classes."""
    classes = np.asarray(list(classes), dtype=int)
    return {m: compute_cams(model, images, classes, info["mean"], info["std"], m,
                            target_layer=target_layer, device=device) for m in methods}


def resolve_checkpoint(dataset: str, model: str | Path | None = None) -> Path:
    """The checkpoint to explain: the best of ``dataset`` (``model=None``), the one of a model
    name (``results/<dataset>/models/<model>.pt``) or a path."""
    from .inference import best_checkpoint

    if model is None:
        return best_checkpoint(dataset)
    path = Path(model).expanduser()
    if path.suffix == ".pt" or path.exists():
        return path
    return paths.RESULTS / dataset / "models" / f"{model}.pt"


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


# --------------------------------------------------------------------------- outcome groups

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


# --------------------------------------------------------------------------- faithfulness

def faithfulness_scores(model: torch.nn.Module, images: np.ndarray, classes: Iterable[int],
                        maps: Mapping[str, np.ndarray], mean: Sequence[float], std: Sequence[float],
                        percentiles: Sequence[int] = (20, 50, 80), device: str | torch.device = "cpu",
                        seed: int = 0, tie_break: float = 1e-5) -> pd.DataFrame:
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
    inputs = to_input(images, mean, std, device)
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
            with _one_blas_thread():
                lerf = ROADLeastRelevantFirstAverage(percentiles)(inputs, ranked, targets, model)
                morf = ROADMostRelevantFirstAverage(percentiles)(inputs, ranked, targets, model)
                mult = CamMultImageConfidenceChange()(inputs, cams, targets, model)
            lerf, morf, mult = (a.reshape(-1) for a in (lerf, morf, mult))
            frames.append(pd.DataFrame({
                "image": np.arange(len(images)), "method": name, "class": classes,
                "ROAD combined": (lerf - morf) / 2, "ROAD MoRF": morf, "ROAD LeRF": lerf,
                "CAM x image": mult,
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


def describe_faithfulness(table: pd.DataFrame, metric: str = "ROAD combined") -> str:
    """One sentence per CAM method on ``metric``, from the computed table."""
    rows = table[(table["metric"] == metric) & (table["better_than_random"] != "(baseline)")]
    base = table[(table["metric"] == metric) & (table["better_than_random"] == "(baseline)")]
    if rows.empty or base.empty:
        return f"No {metric} scores were computed."
    lines = [(f"{metric} (higher = more faithful; random maps: {base['mean'].iloc[0]:+.3f}, "
              f"{int(base['n_images'].iloc[0])} test images):")]
    for row in rows.itertuples():
        verdict = {"better": "better than random maps",
                   "worse": "WORSE than random maps",
                   "no better": "no better than random maps"}[row.better_than_random]
        lines.append(f"- {row.method}: {row.mean:+.3f} (difference to random {row.diff_vs_random:+.3f}, "
                     f"95% CI {row.diff_ci_low:+.3f} to {row.diff_ci_high:+.3f}): {verdict}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- where the maps look

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


def describe_average_maps(averages: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """Sentences on where each method's class-average maps put their mass (computed numbers).

    ``averages[method][class_name]`` is the mean map explaining that class on its own images.
    """
    lines = []
    for method, per_class in averages.items():
        for name, cam in per_class.items():
            s = region_shares(cam)
            what = "class-agnostic map" if method in CLASS_AGNOSTIC else f"evidence for {name}"
            lines.append(
                f"- {method}, {what} on {name} images: {s['centre_share']:.0%} of the "
                f"mass in the central quarter (uniform: {s['centre_uniform']:.0%}), "
                f"{s['border_share']:.0%} in the outer ring (uniform: {s['border_uniform']:.0%}), "
                f"peak at the {s['peak']}."
            )
    return "\n".join(lines)


def peak_border_fraction(maps: np.ndarray) -> float:
    """Share of individual maps whose maximum lies in the outer ring (an eighth of the side)."""
    n, h, w = maps.shape
    ring = max(1, min(h, w) // 8)
    rows, cols = np.unravel_index(maps.reshape(n, -1).argmax(axis=1), (h, w))
    on_border = (rows < ring) | (rows >= h - ring) | (cols < ring) | (cols >= w - ring)
    return float(on_border.mean()) if n else float("nan")


def _lean(shares: Mapping[str, float | str]) -> str:
    centre = shares["centre_share"] / shares["centre_uniform"]
    border = shares["border_share"] / shares["border_uniform"]
    if centre >= 1.2 and centre >= border:
        return "towards the centre, where the object of a photo usually is"
    if border >= 1.2:
        return "towards the border, the background of most photos"
    return "fairly evenly over the image (no region stands out)"


def conclusions(averages: Mapping[str, Mapping[str, np.ndarray]], maps: np.ndarray,
                table: pd.DataFrame, map_size: tuple[int, int], image_size: int,
                method: str = "Grad-CAM") -> str:
    """A Markdown paragraph on what the maps show, every fact computed from the arguments.

    ``averages`` from :func:`class_average_maps` per method, ``maps`` the single ``method``
    maps behind them, ``table`` from :func:`faithfulness_table`.
    """
    parts = [(f"**Resolution.** The target layer's map is {map_size[0]}x{map_size[1]} for "
              f"{image_size}x{image_size} inputs: one cell covers about "
              f"{image_size // map_size[0]}x{image_size // map_size[1]} pixels, so the maps say "
              "*which part* of the image mattered, not which pixels.")]
    if method in averages:
        lean = {name: _lean(region_shares(cam)) for name, cam in averages[method].items()}
        if len(lean) > 1 and len(set(lean.values())) == 1:
            text = f"the evidence for both {' and '.join(lean)} lies {next(iter(lean.values()))}"
        else:
            text = "; ".join(f"the evidence for {name} lies {where}" for name, where in lean.items())
        ring = max(1, image_size // 8)
        road = table[(table["method"] == method) & (table["metric"] == "ROAD combined")]
        caveat = ("" if road.empty or road["better_than_random"].iloc[0] == "better" else
                  f" ({method} did not beat random maps on ROAD below: read this with caution.)")
        parts.append(f"**Where the model looks ({method}, class averages).**{caveat} On average {text}. "
                     f"In {peak_border_fraction(maps):.0%} of the single maps the peak lies in "
                     f"the outer {ring}-pixel ring, which covers "
                     f"{region_shares(np.ones((image_size, image_size)))['border_uniform']:.0%} of the image.")
        border_lean = any("border" in where for where in lean.values())
        parts.append("**Compared with the CIFAKE paper.** Bird & Lotfi (2024) found Grad-CAM "
                     "attention on small imperfections in the background rather than on the object. "
                     + ("Our class averages lean to the border as well, consistent with that finding."
                        if border_lean else
                        "Our class averages do not lean to the border, so on this dataset and "
                        "model we do not see that pattern (the average hides per-image variation: "
                        "see the example grids)."))
    explained = table[table["better_than_random"] != "(baseline)"]
    if len(explained):
        sentences = []
        for metric in ("ROAD combined", "CAM x image"):
            rows = explained[explained["metric"] == metric]
            if len(rows):
                sentences.append(f"on {metric}, " + "; ".join(
                    f"{r.method} is {r.better_than_random} than random maps" for r in rows.itertuples()))
        parts.append(f"**Faithfulness ({int(explained['n_images'].iloc[0])} test images).** "
                     + (". ".join(s[0].upper() + s[1:] for s in sentences)) + ". "
                     "ROAD is the more reliable of the two: multiplying by the map darkens images "
                     "into inputs the model never saw, while ROAD's imputation keeps them natural and "
                     "hides the shape of the removed region (Rong et al. 2022). A map that does no better than random should not be read as an "
                     "explanation of this model.")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- figures

def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The map as a heat map over the uint8 RGB image (the library's ``show_cam_on_image``)."""
    return show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True,
                             image_weight=image_weight)


def mosaic(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Equal-sized uint8 RGB tiles laid out in rows, ``gap`` white pixels apart."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, n_cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = tile
    return out


def plot_tiles(rows: Sequence[Sequence[np.ndarray]], row_names: Sequence[str],
               titles: Sequence[str], suptitle: str):
    """Rows of equal-sized uint8 RGB tiles, one column per image, titled above each column.

    Drawn as one mosaic in one axes (dozens of small axes take seconds to render)."""
    import matplotlib.pyplot as plt

    n = len(rows[0])
    h, w = rows[0][0].shape[:2]
    gap = max(1, w // 16)
    fig, ax = plt.subplots(figsize=(1.4 * n + 1.0, 1.4 * len(rows) + 0.9))
    ax.imshow(mosaic(rows, gap), interpolation="nearest")
    ax.set_xticks([j * (w + gap) + w / 2 for j in range(n)], list(titles), fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))], list(row_names), fontsize=9)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_examples(images: np.ndarray, maps: Mapping[str, np.ndarray], titles: Sequence[str],
                  suptitle: str):
    """Grid: one column per image; the image, then one overlay row per method."""
    import matplotlib.pyplot as plt

    if len(images) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.0))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{suptitle}: none in the test split", ha="center", va="center")
        return fig
    rows = [list(images)] + [[overlay(img, m) for img, m in zip(images, cams)] for cams in maps.values()]
    return plot_tiles(rows, ["image", *maps], titles, suptitle)


def example_figures(model: torch.nn.Module, info: Mapping, images: np.ndarray, files: Sequence[str],
                    p_fake: np.ndarray, groups: np.ndarray, n_per_group: int,
                    methods: Iterable[str] = tuple(METHODS), threshold: float = 0.5,
                    device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """One labelled grid per outcome group (TP, TN, FP, FN), explaining the *predicted* class.

    Each method's CAM is computed once for all picked images of a group (one target each).
    """
    figures = {}
    methods = list(methods)
    for name, idx in pick_examples(groups, n_per_group, seed).items():
        predicted = (p_fake[idx] >= threshold).astype(int)
        maps = compute_all(model, images[idx], predicted, info, methods, device) if len(idx) else {}
        title = f"{name}: {OUTCOMES[name]}" + ("; maps explain the predicted class" if len(idx) else "")
        figures[name] = plot_examples(images[idx], maps, example_titles(files, p_fake, idx), title)
    return figures


def example_titles(files: Sequence[str], p_fake: np.ndarray, idx: np.ndarray) -> list[str]:
    """Column titles of an example grid: file name and P(FAKE)."""
    return [f"{Path(str(files[i])).name}\nP(FAKE)={p_fake[i]:.2f}" for i in idx]


# --------------------------------------------------------------------------- two-view models

def has_two_views(model: torch.nn.Module) -> bool:
    """Whether ``model`` sums a global and a local view (``two_scale``), so each view's share
    of the logit can be read on its own."""
    return hasattr(model, "view_logits") and hasattr(model, "local_evidence")


@torch.no_grad()
def _two_view_batches(model: torch.nn.Module, info: Mapping, images: np.ndarray, device,
                      batch_size: int, read: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``read(batch)`` for the normalised images of a two-view model in eval mode, concatenated."""
    if not has_two_views(model):
        raise TypeError(f"{type(model).__name__} has one view; only two_scale splits its logit")
    if len(images) == 0:
        raise ValueError("no images given: pass at least one (N, H, W, 3) uint8 image")
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([
            read(to_input(images[start:start + batch_size], info["mean"], info["std"], device)).float().cpu().numpy()
            for start in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def view_logits(model: torch.nn.Module, info: Mapping, images: np.ndarray,
                device: str | torch.device = "cpu", batch_size: int = 32) -> pd.DataFrame:
    """Each image's logit split by view: columns ``global``, ``local`` and ``total`` (their sum)."""
    logits = _two_view_batches(model, info, images, device, batch_size,
                               lambda batch: torch.cat(model.view_logits(batch), dim=1))
    return pd.DataFrame({"global": logits[:, 0], "local": logits[:, 1], "total": logits.sum(1)})


def view_table(views: pd.DataFrame, labels: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """How each view decides on its own (its share's sign against the threshold's logit) and
    how large its share is, next to the two together."""
    cut = float(np.log(threshold / (1 - threshold)))
    labels = np.asarray(labels).astype(bool)
    rows = {}
    for column in ("global", "local", "total"):
        decided = views[column].to_numpy() >= cut
        rows["both views" if column == "total" else f"{column} view alone"] = {
            "accuracy": float((decided == labels).mean()),
            "errors": int((decided != labels).sum()),
            "mean |share of the logit|": float(views[column].abs().mean()),
        }
    table = pd.DataFrame(rows).T
    table["errors"] = table["errors"].astype(int)
    return table


def local_evidence_maps(model: torch.nn.Module, info: Mapping, images: np.ndarray,
                        device: str | torch.device = "cpu", batch_size: int = 32) -> np.ndarray:
    """The local view's signed neighbourhood scores (:meth:`TwoScaleNet.local_evidence`),
    (N, H, W) at the images' size: nearest-neighbour upsampled, so each block is one score."""
    def read(batch: torch.Tensor) -> torch.Tensor:
        scores = model.local_evidence(batch)[:, None]
        return torch.nn.functional.interpolate(scores, size=images.shape[1:3]).squeeze(1)

    return _two_view_batches(model, info, images, device, batch_size, read)


def describe_views(table: pd.DataFrame) -> str:
    """One paragraph on :func:`view_table`: how each view decides alone and how much it weighs."""
    g, loc, both = (table.loc[k] for k in ("global view alone", "local view alone", "both views"))
    share = "mean |share of the logit|"
    together = ("fewer errors than either alone, so neither view's map is the whole explanation"
                if both["errors"] < min(g["errors"], loc["errors"]) else
                "no fewer errors than the better view alone")
    return (f"**Two views.** Alone, the global view (the half-size image, which Grad-CAM explains) "
            f"gets {g['accuracy']:.2%} of the test images ({int(g['errors'])} errors), the local view "
            f"(native pixels, mapped exactly above) {loc['accuracy']:.2%} ({int(loc['errors'])}); together "
            f"{both['accuracy']:.2%} ({int(both['errors'])}): {together}. Grad-CAM's maps explain the "
            f"global view's share of the logit (mean |share| {g[share]:.2f}), the local-evidence maps "
            f"the local view's ({loc[share]:.2f}).")


def local_evidence_figures(model: torch.nn.Module, info: Mapping, images: np.ndarray,
                           files: Sequence[str], p_fake: np.ndarray, groups: np.ndarray,
                           n_per_group: int, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """The local view's maps for the same examples as :func:`example_figures` (same seed)."""
    figures = {}
    for name, idx in pick_examples(groups, n_per_group, seed).items():
        if len(idx):
            maps = local_evidence_maps(model, info, images[idx], device)
            figures[name] = plot_local_evidence(images[idx], maps, example_titles(files, p_fake, idx),
                                                f"{name}: {OUTCOMES[name]}")
    return figures


def plot_local_evidence(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], suptitle: str):
    """Images over their local-evidence maps on one symmetric scale (red: FAKE, blue: REAL)."""
    from matplotlib import colormaps

    scale = float(np.abs(maps).max()) or 1.0
    colours = colormaps["RdBu_r"]((maps / scale + 1) / 2)[..., :3]  # (N, H, W, 3) in [0, 1]
    tinted = ((0.5 * images / 255.0 + 0.5 * colours) * 255).round().astype(np.uint8)
    return plot_tiles([list(images), list(tinted)], ["image", "local evidence"], titles,
                      f"{suptitle} (colour scale ±{scale:.2f} logit per neighbourhood)")


def save_results(dataset: str, table: pd.DataFrame, summary: Mapping) -> tuple[Path, Path]:
    """``results/<dataset>/gradcam/faithfulness.csv`` and ``summary.json`` (atomically)."""
    from .repro import atomic_path, write_json

    folder = paths.results_dir(dataset, "gradcam")
    csv = folder / "faithfulness.csv"
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return csv, write_json(folder / "summary.json", dict(summary))


def plot_average_maps(averages: Mapping[str, Mapping[str, np.ndarray]], title: str = ""):
    """Class-average maps: one row per method, one column per class (same colour scale)."""
    import matplotlib.pyplot as plt

    methods = list(averages)
    classes = sorted({c for per in averages.values() for c in per}, key=CLASS_NAMES.index)
    fig, axes = plt.subplots(len(methods), len(classes), figsize=(3.0 * len(classes) + 0.6,
                                                                  2.7 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        for j, name in enumerate(classes):
            ax = axes[i, j]
            if name in averages[method]:
                im = ax.imshow(averages[method][name], cmap="jet", vmin=0, vmax=1)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            what = "class-agnostic" if method in CLASS_AGNOSTIC else f"evidence for {name}"
            ax.set_title(f"{method}: {what}\n(mean over {name} test images)", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_faithfulness(table: pd.DataFrame, metrics: Sequence[str] = ("ROAD combined", "CAM x image")):
    """Mean score with its CI per method, one panel per metric; the random baseline in grey."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = table[table["metric"] == metric]
        colours = ["0.6" if m == RANDOM else "C0" for m in rows["method"]]
        err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        ax.bar(rows["method"], rows["mean"], yerr=err, color=colours, capsize=4)
        ax.axhline(0, color="k", linewidth=0.8)
        better = rows["better_if"].iloc[0] if len(rows) else "higher"
        ax.set_title(f"{metric} ({better} = more faithful)", fontsize=9)
        ax.set_ylabel("(LeRF - MoRF) / 2, logit units" if metric == "ROAD combined"
                      else "change of the explained logit")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig
