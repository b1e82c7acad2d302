"""FID / KID / diversity: known answers on given features, and the Inception network offline."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from helpers.gan import quality


def _features(n: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(0.3, 0.2, (n, quality.FEATURE_DIM))).astype(np.float32)


def test_fid_of_identical_feature_sets_is_zero_and_of_a_shift_is_its_squared_length():
    feats = _features()
    same = quality.fid_kid(feats, feats)
    assert abs(same["fid"]) < 1e-3 and (same["n_real"], same["n_fake"]) == (50, 50)
    # equal covariances, means apart by c: FID = |c|^2 exactly
    shifted = quality.fid_kid(feats, feats + 0.1)
    assert shifted["fid"] == pytest.approx(0.01 * quality.FEATURE_DIM, rel=1e-3)
    assert shifted["kid"] > 5 * abs(same["kid"]) and same["fid_method"] == "low-rank"


@pytest.mark.parametrize("n", [30, 100])  # fewer and more samples than feature dimensions
def test_low_rank_fid_equals_torchmetrics(n):
    import torch

    real = torch.from_numpy(_features(n, seed=2)[:, :64].astype(np.float64))
    fake = torch.from_numpy(_features(n, seed=3)[:, :64].astype(np.float64) * 1.3)
    expected = quality._fid_torchmetrics(real, fake)
    assert quality._fid_low_rank(real, fake) == pytest.approx(expected, rel=1e-6)


def test_kid_leaves_the_global_random_stream_alone():
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    quality.fid_kid(_features(), _features(seed=1), kid_subset_size=20)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("n", [30, 100])
def test_symmetric_fid_equals_torchmetrics(n):
    """The method a GPU takes from 2048 samples on (symmetric eigen-decompositions only)."""
    import torch

    real = torch.from_numpy(_features(n, seed=2)[:, :64].astype(np.float64))
    fake = torch.from_numpy(_features(n, seed=3)[:, :64].astype(np.float64) * 1.3)
    expected = quality._fid_torchmetrics(real, fake)
    assert quality._fid_symmetric(real, fake) == pytest.approx(expected, rel=1e-6)
    assert quality.frechet_distance(real, fake, "symmetric")[1] == "symmetric"


def test_fid_and_kid_statistics_run_on_a_cuda_gpu_and_on_the_cpu_elsewhere():
    import torch

    assert quality.stats_device("cuda") == torch.device("cuda")
    assert quality.stats_device("mps") == quality.stats_device("cpu") == torch.device("cpu")  # no float64
    # below the feature count the exact low-rank identity everywhere; above it the CPU keeps
    # torchmetrics (the committed numbers' method) and a GPU takes the symmetric one
    assert quality.choose_fid_method(500, 2048, "cuda") == quality.choose_fid_method(500, 2048) == "low-rank"
    assert quality.choose_fid_method(5000, 2048) == "torchmetrics"
    assert quality.choose_fid_method(5000, 2048, "cuda") == "symmetric"


def test_kid_never_reseeds_a_gpus_random_stream(monkeypatch):
    """torch.manual_seed inside the KID also reset every GPU's stream (fork_rng(devices=[])
    restores only the CPU's), so a GAN replayed the same noise after each score."""
    import torch

    def refuse(seed):
        raise AssertionError("a GPU's random stream was reseeded")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    monkeypatch.setattr(torch.mps, "manual_seed", refuse)
    quality.fid_kid(_features(), _features(seed=1), kid_subset_size=20)


@pytest.mark.cuda
@pytest.mark.slow
def test_fid_and_kid_on_the_gpu_equal_the_cpus():
    real, fake = _features(2100, seed=4), _features(2100, seed=5) * 1.1
    on_cpu = quality.fid_kid(real, fake, kid_subsets=10)
    on_gpu = quality.fid_kid(real, fake, kid_subsets=10, device="cuda")
    assert (on_cpu["fid_method"], on_gpu["fid_method"]) == ("torchmetrics", "symmetric")
    for key in ("fid", "kid", "kid_std"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-6)


def test_diversity_measures():
    assert quality.mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    same = np.repeat(np.full((1, 8, 8, 3), 7, np.uint8), 5, axis=0)
    assert quality.pixel_diversity(same) == 0
    black_white = np.stack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)])
    assert quality.pixel_diversity(black_white) == pytest.approx(1.0)


def test_inception_features_load_from_the_wheel_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the FID network must never be downloaded")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    feats = quality.inception_features(images)
    assert feats.shape == (2, quality.FEATURE_DIM) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all()  # pool features after ReLU
    with pytest.raises(ValueError, match="uint8"):
        quality.inception_features(images.astype(np.float32))


@pytest.mark.slow
def test_fid_is_about_zero_for_identical_images_and_large_for_real_vs_noise():
    from helpers.data.demo import TRAIN_PHOTOS, photo_crops

    real = photo_crops(TRAIN_PHOTOS, 30, 32, np.random.default_rng(0))
    reference = quality.QualityReference.from_images(real)
    same = quality.fid_kid(reference.features, reference.features)
    noise = np.random.default_rng(1).integers(0, 256, real.shape, dtype=np.uint8)
    vs_noise = quality.score(noise, reference)
    assert abs(same["fid"]) < 0.01
    assert vs_noise["fid"] > 100 and vs_noise["kid"] > 0.1 > abs(same["kid"])
    assert (vs_noise["n_real"], vs_noise["n_fake"]) == (30, 30)
    assert "30 generated vs 30 real" in quality.describe(vs_noise)


def test_fid_extrapolation_removes_most_of_the_small_sample_bias():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1000, 128)), rng.normal(size=(1000, 128))  # one distribution
    shifted = b.copy()
    shifted[:, 0] += 3.0  # true FID 9
    same = quality.fid_extrapolated(a, b, at=10_000)
    moved = quality.fid_extrapolated(a, shifted, at=10_000)
    assert quality.fid_kid(a, b)["fid"] > 5 and abs(same["fid_infinity"]) < 1
    assert abs(moved["fid_infinity"] - 9) < 1
    assert same["fid_infinity"] < same["fid_projected"] < quality.fid_kid(a, b)["fid"]


@pytest.mark.slow
def test_two_halves_of_one_real_set_score_near_the_floor_and_a_generator_far_above():
    """The floor: KID of real vs real is ~0 (unbiased), FID well above 0 at small n."""
    from helpers.data.demo import TRAIN_PHOTOS, photo_crops

    real = photo_crops(TRAIN_PHOTOS, 80, 32, np.random.default_rng(0))
    reference, floor = quality.reference_and_floor(real, 500, seed=0)  # at most half each
    assert len(reference) == 40 and (floor["n_real"], floor["n_fake"]) == (40, 40)
    assert abs(floor["kid"]) < 3 * floor["kid_std"] + 0.01 and floor["fid"] > 10
    collapsed = np.repeat(real[:1], 40, axis=0)  # a generator that makes one image
    bad = quality.score(collapsed, reference)
    assert bad["kid"] > floor["kid"] + 0.05 and bad["fid"] > floor["fid"] + 50
    assert bad["diversity_ratio"] < 0.01 < floor["diversity_ratio"]
    with pytest.raises(ValueError, match="two disjoint sets"):
        quality.reference_and_floor(real[:3], 10)
