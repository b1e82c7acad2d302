"""The DCGAN: shapes, one training step, determinism, checkpoints, export and the notebook."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from helpers.data.cache import prepare
from helpers.gan.export import export_dir, export_images, load_exported, verify_export
from helpers.gan.networks import Discriminator, GANConfig, Generator
from helpers.gan.train import (
    DCGAN,
    STAT_KEYS,
    EpochMonitor,
    load_checkpoint,
    plan_run,
    real_training_images,
    save_checkpoint,
    to_unit_range,
    train_gan,
)
from tests.conftest import ROOT, textured, write_dataset

CPU = torch.device("cpu")
TABLES_A = {0: list(range(2, 66)), 1: [9] * 64}  # no IJG quality makes these: copied, not estimated
TABLES_B = {0: [3] * 64, 1: list(range(70, 6, -1))}


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_generator_and_discriminator_shapes(resolution, spectral_norm):
    G = Generator(nz=100, ngf=16, resolution=resolution)
    D = Discriminator(ndf=16, resolution=resolution, spectral_norm=spectral_norm)
    images = G(torch.randn(5, 100))
    assert images.shape == (5, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1  # tanh range
    assert D(images).shape == (5,)


def test_unsupported_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match="32 or 64"):
        Generator(resolution=48)


def test_paper_initialisation():
    model = DCGAN(GANConfig(ngf=16, ndf=16), CPU)
    conv = model.G.net[0].weight
    assert abs(conv.std().item() - 0.02) < 0.003 and abs(conv.mean().item()) < 0.002
    bn = model.D.net[3]
    assert isinstance(bn, torch.nn.BatchNorm2d) and abs(bn.weight.mean().item() - 1) < 0.01


def _d_loss(model: DCGAN, real: torch.Tensor, fake: torch.Tensor) -> float:
    with torch.no_grad():
        n = len(real)
        return (model.loss(model.D(real), torch.ones(n)) + model.loss(model.D(fake), torch.zeros(n))).item()


def test_one_step_changes_both_networks_and_lowers_the_discriminator_loss():
    model = DCGAN(GANConfig(ngf=16, ndf=16, seed=0), CPU)
    rng = np.random.default_rng(0)
    real = to_unit_range(torch.from_numpy(np.stack([textured(rng, 32, False) for _ in range(16)]))
                             .permute(0, 3, 1, 2))
    with torch.no_grad():
        fake = model.G(model.noise(16, torch.Generator().manual_seed(1)))  # a fixed batch
    before_g = [p.detach().clone() for p in model.G.parameters()]
    before_d = [p.detach().clone() for p in model.D.parameters()]
    loss_before = _d_loss(model, real, fake)
    stats = model.train_step(real)
    assert set(stats) == set(STAT_KEYS) and all(np.isfinite(list(stats.values())))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, model.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, model.D.parameters()))
    assert _d_loss(model, real, fake) < loss_before


def test_training_is_deterministic_and_checkpoints_round_trip(tmp_path):
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(48)])
    config = GANConfig(ngf=8, ndf=8, batch_size=16, epochs=2, seed=3)
    runs = [train_gan(images, config, CPU, progress=False) for _ in range(2)]
    assert np.array_equal(runs[0][0].generate(6, seed=1), runs[1][0].generate(6, seed=1))
    model, history = runs[0]
    assert [h["epoch"] for h in history] == [1, 2] and len(model.step_log["loss_d"]) == 6
    path = save_checkpoint(model, tmp_path / "models" / "dcgan.pt", history=history)
    loaded, state = load_checkpoint(path)
    assert loaded.epoch == 2 and state["config"]["ngf"] == 8 and len(state["history"]) == 2
    assert np.array_equal(loaded.generate(6, seed=1), model.generate(6, seed=1))
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no leftovers


def test_epoch_monitor_writes_grids_scores_and_checkpoints(project_dirs):
    _, results = project_dirs
    stale = results / "demo" / "generated_images" / "epoch_009.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier, longer run")
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(32)])
    monitor = EpochMonitor("demo", 2, grid_images=4, score=lambda g: {"fid": float(g.epoch)},
                               score_every=0, score_last=True, checkpoint=results / "demo" / "models" / "dcgan.pt")
    _, history = train_gan(images, GANConfig(ngf=8, ndf=8, batch_size=16, epochs=2), CPU,
                               on_epoch=monitor, progress=False)
    assert sorted(p.name for p in stale.parent.glob("*.png")) == ["epoch_001.png", "epoch_002.png"]
    assert "fid" not in history[0] and history[1]["fid"] == 2.0  # scored after the last epoch only
    assert len(load_checkpoint(monitor.checkpoint)[1]["history"]) == 2


def test_train_gan_rejects_images_at_the_wrong_resolution():
    with pytest.raises(ValueError, match="resize them first"):
        train_gan(np.zeros((8, 64, 64, 3), np.uint8), GANConfig(resolution=32), CPU)


def test_real_training_images_are_the_real_train_split_at_the_gan_resolution(project_dirs, tmp_path):
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), progress=False)
    images, labels = cache.part("train")
    real = real_training_images(cache)
    assert real.shape == ((labels == 0).sum(), 32, 32, 3)
    assert np.array_equal(real, images[labels == 0])
    assert real_training_images(cache, 64).shape[1:] == (64, 64, 3)
    plan = plan_run(cache, CPU)  # the demo on a CPU: the small, fast settings
    n_real = int((labels == 0).sum())
    assert (plan.config.epochs, plan.config.ngf, plan.fid_samples, plan.n_real) == (6, 32, 64, n_real)
    assert plan.config.batch_size == min(32, n_real)  # never more than the training images
    assert plan.n_export == int((cache.part("test")[1] == 0).sum()) and "epochs" in plan.auto
    assert plan_run(cache, CPU, epochs=3, width=64).config.ndf == 64


def _write_jpeg(path: Path, image: np.ndarray, tables: dict, subsampling: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", qtables=tables, subsampling=subsampling)


def test_exported_jpegs_carry_the_real_images_tables(project_dirs, tmp_path):
    """Real photos in two table sets (4:4:4 and 4:2:0): every export copies one of them."""
    data_dir, _ = project_dirs
    rng = np.random.default_rng(0)
    source = tmp_path / "shoes"
    (source / "ai-midjourney").mkdir(parents=True)
    for i in range(24):
        tables, sampling = (TABLES_A, 0) if i % 3 else (TABLES_B, 2)
        _write_jpeg(source / "real" / f"r{i:03d}.jpg", textured(rng, 40, False), tables, sampling)
        Image.fromarray(textured(rng, 40, True)).save(source / "ai-midjourney" / f"f{i:03d}.jpg", quality=90)
    cache = prepare("sneakers", source, image_size=32, progress=False)
    model = DCGAN(GANConfig(ngf=8, ndf=8), CPU)
    manifest = export_images(model, cache, 30, seed=0, progress=False)

    folder = data_dir / "processed" / "sneakers" / "gan"
    assert manifest["count"] == 30 and manifest["encoding"] == "JPEG" and manifest["resolution"] == 32
    assert json.loads((folder / "manifest.json").read_text())["files"] == manifest["files"]
    seen = set()
    for name in manifest["files"]:
        with Image.open(folder / name) as img:
            tables = {k: list(v) for k, v in img.quantization.items()}
            assert tables in (TABLES_A, TABLES_B), name
            assert JpegImagePlugin.get_sampling(img) == (0 if tables == TABLES_A else 2), name
            seen.add(0 if tables == TABLES_A else 1)
    assert seen == {0, 1}  # both of the real set's encodings are represented
    assert verify_export("sneakers")["mismatched"] == 0
    pixels = load_exported("sneakers")
    assert pixels.shape == (30, 32, 32, 3) and pixels.dtype == np.uint8
    assert load_exported("sneakers", size=16).shape == (30, 16, 16, 3)


def test_png_datasets_are_exported_lossless_and_absent_exports_read_as_none(project_dirs, tmp_path):
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=16), progress=False)
    assert load_exported("demo") is None
    model = DCGAN(GANConfig(ngf=8, ndf=8), CPU)
    manifest = export_images(model, cache, 5, seed=2, progress=False)
    assert manifest["encoding"] == "PNG" and "lossless" in manifest["encoding_note"]
    assert np.array_equal(load_exported("demo"), model.generate(5, seed=2))  # lossless
    with Image.open(io.BytesIO((export_dir("demo") / manifest["files"][0]).read_bytes())) as img:
        assert img.format == "PNG"


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_demo_layout(project_dirs, tmp_path):
    papermill = pytest.importorskip("papermill")
    data_dir, results = project_dirs
    source = write_dataset(tmp_path / "tiny", n_per_class=40)
    out = tmp_path / "04.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "04_train_gan.ipynb"), str(out),
                               parameters={"DATASET": "demo", "DATA_SOURCE": str(source), "EPOCHS": 2,
                                           "BATCH_SIZE": 16, "FID_SAMPLES": 8, "N_EXPORT": 6},
                               cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    run = results / "demo"
    assert (run / "models" / "dcgan.pt").exists()
    assert {p.name for p in (run / "generated_images").glob("*.png")} >= {
        "epoch_001.png", "epoch_002.png", "final_samples.png"}
    assert (run / "curves" / "gan_losses.png").exists()
    metrics = json.loads((run / "gan_metrics.json").read_text())
    assert metrics["quality"]["n_fake"] == 8 and np.isfinite(metrics["quality"]["fid"])
    manifest = json.loads((data_dir / "processed" / "demo" / "gan" / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["encoding"] == "PNG"
