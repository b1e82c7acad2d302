"""The training loop: it learns, is deterministic, resumes exactly, round-trips checkpoints, runs DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import data, inference, models, train
from tests.conftest import ROOT, write_dataset


@pytest.fixture
def tiny_cache(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "tiny", n_per_class=40)
    return data.prepare("demo", source, seed=0, progress=False)


def quick(dataset="demo", **overrides) -> train.TrainConfig:
    # precision pinned: the probe measures speed, and on a busy machine a tiny model's bf16/fp32
    # ratio can land on either side of the margin from one run to the next
    settings = dict(model="fast", width=16, epochs=3, batch_size=32, lr=0.05, device="cpu", threads=2,
                    cpu_amp=False)
    return train.default_config(dataset, **{**settings, **overrides})


def test_default_configs_exist_for_every_dataset():
    for name in data.DATASETS:
        config = train.default_config(name)
        assert config.dataset == name and config.epochs > 0 and config.model in models.MODELS
        assert config.image_size == data.get_spec(name).image_size


@pytest.mark.slow
def test_a_tiny_run_lowers_the_loss_and_fits_64_images(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "fit", n_per_class=32, layout="shoes")
    cache = data.prepare("demo", source, seed=0, progress=False)  # no JPEG step: raw pixels
    # train on all 64 images (4 of them double as the loop's validation split)
    cache.split[:] = 0
    cache.split[[0, 1, 62, 63]] = 1
    config = quick(epochs=20, batch_size=16, translate=0, flip=False, label_smoothing=0.0,
                   tta=False, lr=0.02)
    result = train.fit(cache, config, out_dir=tmp_path / "m", progress=False)
    history = result.history
    assert history["train_loss"].iloc[-1] < 0.5 * history["train_loss"].iloc[0]
    images, labels = cache.images, cache.labels
    assert len(images) == 64
    p = inference.predict_proba(result.model, inference.load_detector(result.checkpoint)[1], images)
    assert ((p >= 0.5) == labels).all()


def test_two_cpu_runs_with_the_same_seed_are_identical(tiny_cache, tmp_path):
    a = train.fit(tiny_cache, quick(), out_dir=tmp_path / "a", progress=False)
    b = train.fit(tiny_cache, quick(), out_dir=tmp_path / "b", progress=False)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    assert a.history[cols].equals(b.history[cols])
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k


class Interrupt(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("ema", [None, 0.9])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_cache, tmp_path, ema):
    whole = train.fit(tiny_cache, quick(epochs=4, ema=ema), out_dir=tmp_path / "whole", progress=False)

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train.fit(tiny_cache, quick(epochs=4, ema=ema), out_dir=tmp_path / "cut", progress=False,
                  on_epoch=stop_after_two)
    assert (tmp_path / "cut" / "fast.last.pt").exists()
    resumed = train.fit(tiny_cache, quick(epochs=4, ema=ema), out_dir=tmp_path / "cut", progress=False)
    assert resumed.resumed_epochs == 2
    cols = ["train_loss", "val_loss", "val_acc"]
    assert np.allclose(whole.history[cols].to_numpy(), resumed.history[cols].to_numpy())
    assert whole.metrics == resumed.metrics


def test_ema_weights_are_the_ones_validated_and_saved(tiny_cache, tmp_path):
    raw = train.fit(tiny_cache, quick(epochs=2), out_dir=tmp_path / "raw", progress=False)
    ema = train.fit(tiny_cache, quick(epochs=2, ema=0.5), out_dir=tmp_path / "ema", progress=False)
    saved = torch.load(ema.checkpoint, weights_only=True)
    assert saved["config"]["ema"] == 0.5
    for key, value in ema.model.state_dict().items():
        assert torch.equal(saved["state_dict"][key], value), key
    # same seed, same steps: only the averaging differs, so the saved weights differ
    assert not torch.equal(raw.model.head.weight, ema.model.head.weight)


def test_checkpoint_round_trip(tiny_cache, tmp_path):
    result = train.fit(tiny_cache, quick(epochs=2), out_dir=tmp_path / "m", progress=False)
    model, info = inference.load_detector(result.checkpoint)
    assert info["data_fingerprint"] == tiny_cache.fingerprint and info["image_size"] == 32
    # the whole run's time, not the time to the saved epoch
    assert info["epochs_run"] == 2 and info["train_seconds"] == pytest.approx(result.seconds)
    images, _ = tiny_cache.part("val")
    assert np.allclose(inference.predict_proba(model, info, images),
                       inference.predict_proba(result.model, info, images), atol=1e-6)
    (tmp_path / "broken.pt").write_bytes(result.checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.pt"):
        inference.load_detector(tmp_path / "broken.pt")
    with pytest.raises(FileNotFoundError, match="make train"):
        inference.load_detector(tmp_path / "models" / "missing.pt")


@pytest.mark.slow
def test_ddp_entry_point_with_two_gloo_processes(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "ddp", n_per_class=24)
    out = tmp_path / "ddp_models"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "helpers.train", "--dataset", "demo", "--data-source", str(source), "--epochs", "2",
           "--batch-size", "16", "--width", "16", "--device", "cpu", "--out-dir", str(out), "--quiet"]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout
    _, info = inference.load_detector(out / "fast.pt")
    assert info["config"]["epochs"] == 2


def test_augment_mirrors_and_shifts_with_reflection_like_numpy():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (10, 12, 9, 3), dtype=np.uint8)  # (N, H, W, 3); not square
    images = torch.from_numpy(stored).permute(0, 3, 1, 2)  # channels_last, as fit keeps them
    index, flips = torch.tensor([3, 0, 9, 3]), torch.tensor([False, True, False, True])
    shifts = torch.tensor([[0, 0], [2, -1], [-3, 3], [1, 2]])  # (rows, columns)
    out = train.augment(images, index, flips, shifts)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 12, 9)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for k in range(4):
        dy, dx = shifts[k].tolist()
        padded = np.pad(stored[index[k]], ((3, 3), (3, 3), (0, 0)), mode="reflect")
        expected = padded[3 + dy:3 + dy + 12, 3 + dx:3 + dx + 9]
        expected = expected[:, ::-1] if flips[k] else expected
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), expected), k


def test_tone_augmentation_scales_contrast_and_shifts_brightness_per_image():
    config = train.TrainConfig(tone=0.3)
    order, _, shifts, tone, _ = train.epoch_plan(50, config, epoch=0)
    plain = train.epoch_plan(50, train.TrainConfig(), epoch=0)
    assert torch.equal(order, plain.order) and torch.equal(shifts, plain.shifts)  # other draws unchanged
    assert torch.equal(plain.tone, torch.tensor([[1.0, 0.0]] * 50))  # tone=0: identity
    assert (tone[:, 0] - 1).abs().max() <= 0.3 and tone[:, 1].abs().max() <= 0.3
    assert tone[:, 1].std() > 0.05  # really random per image
    x, std = torch.randn(2, 3, 4, 4), torch.tensor([0.5, 0.25, 0.2])
    out = train.adjust_tone(x, torch.tensor([[2.0, 0.0], [1.0, 0.1]]), std)
    centre = x[0].mean()
    assert torch.allclose(out[0] - centre, 2 * (x[0] - centre), atol=1e-6)
    assert torch.allclose(out[1] - x[1], (0.1 / std).view(3, 1, 1).expand(3, 4, 4), atol=1e-6)


def test_cutout_greys_one_clipped_square_per_image_and_leaves_the_rest():
    plain = train.epoch_plan(40, train.TrainConfig(tone=0.3), epoch=0)
    plan = train.epoch_plan(40, train.TrainConfig(tone=0.3, cutout=8), epoch=0)
    for a, b in zip(plain[:4], plan[:4]):
        assert torch.equal(a, b)  # switching Cutout on leaves the earlier draws as they were
    assert torch.equal(plain.centres, torch.zeros(40, 2)) and plan.centres.std() > 0.2
    images = torch.randint(0, 128, (2, 3, 20, 30), dtype=torch.uint8)  # never 128 by chance
    out = train.cut_out(images, torch.tensor([[0.5, 0.5], [0.0, 0.95]]), side=8)
    grey = out == 128
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.uint8
    assert torch.equal(grey[0, 0].nonzero().amin(0), torch.tensor([6, 11]))  # rows 6-13, cols 11-18
    assert grey[0].sum() == 3 * 8 * 8  # side x side, in every channel
    assert grey[1, 0].sum() == 4 * 6  # at the corner: rows 0-3, columns 24-29 (clipped)
    assert torch.equal(out[~grey], images[~grey])  # nothing else touched


def test_a_cpu_amp_checkpoint_is_scored_in_bfloat16_where_the_cpu_has_it(tiny_cache, tmp_path, monkeypatch):
    from helpers import accel

    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)  # emulated where not native
    result = train.fit(tiny_cache, quick(epochs=1, cpu_amp=True), out_dir=tmp_path / "m", progress=False)
    model, info = inference.load_detector(result.checkpoint)
    assert info["config"]["cpu_amp"] is True
    images, _ = tiny_cache.part("val")
    bf16 = inference.predict_proba(model, info, images)
    fp32 = inference.predict_proba(model, {**info, "config": {**info["config"], "cpu_amp": False}}, images)
    assert not np.array_equal(bf16, fp32) and np.allclose(bf16, fp32, atol=0.05)
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: False)  # e.g. an AVX2-only CPU: fp32
    assert np.array_equal(inference.predict_proba(model, info, images), fp32)


def test_ensemble_members_learn_independently_and_round_trip(tiny_cache, tmp_path):
    config = quick(epochs=2, members=2)
    result = train.fit(tiny_cache, config, out_dir=tmp_path / "m", progress=False)
    model, info = inference.load_detector(result.checkpoint)
    assert isinstance(model, models.Ensemble) and info["config"]["members"] == 2
    images, _ = tiny_cache.part("val")
    assert np.allclose(inference.predict_proba(model, info, images),
                       inference.predict_proba(result.model, info, images), atol=1e-6)
    # each member gets the gradient of its own loss only: member 0 of an ensemble trains
    # exactly like a single model with the same starting weights and batches
    torch.manual_seed(0)
    ensemble = models.build_model("fast", 32, width=8, members=2)
    single = models.build_model("fast", 32, width=8)
    single.load_state_dict(ensemble.members[0].state_dict())
    x, y = torch.randn(8, 3, 32, 32), torch.rand(8)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        ensemble.train()(x), y[:, None].expand(8, 2), reduction="none").mean(0).sum()
    loss.backward()
    torch.nn.functional.binary_cross_entropy_with_logits(single.train()(x).flatten(), y).backward()
    assert torch.allclose(ensemble.members[0].stem[0].weight.grad, single.stem[0].weight.grad, atol=1e-6)


def test_the_command_line_separates_the_split_seed_from_the_training_seed(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "cli", n_per_class=20)
    out = tmp_path / "cli_models"
    args = ["--dataset", "demo", "--data-source", str(source), "--epochs", "1", "--batch-size", "16",
            "--width", "8", "--device", "cpu", "--out-dir", str(out), "--quiet"]
    assert train.main([*args, "--seed", "0", "--split-seed", "1"]) == 0
    _, info = inference.load_detector(out / "fast.pt")
    split_one = data.prepare("demo", source, seed=1, progress=False)
    assert info["config"]["seed"] == 0 and info["data_fingerprint"] == split_one.fingerprint
    assert split_one.fingerprint != data.prepare("demo", source, seed=0, progress=False).fingerprint


def test_a_compiled_run_saves_and_reloads_the_plain_model(tiny_cache, tmp_path, monkeypatch):
    # dynamo's aot_eager backend: the torch.compile wrapper without a C++ compiler, so the test
    # checks what compiling changes for the loop (state-dict names, saving, reloading), not inductor
    compile_fn = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module: compile_fn(module, backend="aot_eager"))
    result = train.fit(tiny_cache, quick(epochs=2, compile=True), out_dir=tmp_path / "c", progress=False)
    eager = train.fit(tiny_cache, quick(epochs=2), out_dir=tmp_path / "e", progress=False)
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert list(saved) == list(eager.model.state_dict())  # no "_orig_mod." prefixes
    model, _ = inference.load_detector(result.checkpoint)
    assert len(result.history) == 2
    for (name, x), y in zip(model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-3), name  # the same training, traced
