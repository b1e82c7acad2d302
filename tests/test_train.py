"""The training loop: it learns, is deterministic, resumes exactly, round-trips checkpoints, runs DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.core import accel, models
from helpers.core.detector import Detector
from helpers.data.cache import prepare
from helpers.data.datasets import DATASETS, get_spec
from helpers.training.__main__ import main
from helpers.training.batches import augment, cut_out, epoch_plan
from helpers.training.config import TrainConfig, default_config
from helpers.training.loop import fit
from tests.conftest import ROOT, write_dataset


@pytest.fixture
def tiny_cache(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "tiny", n_per_class=40)
    return prepare("demo", source, seed=0, progress=False)


def quick(dataset="demo", **overrides) -> TrainConfig:
    # precision pinned: the probe measures speed, and on a busy machine a tiny model's bf16/fp32
    # ratio can land on either side of the margin from one run to the next
    settings = dict(model="fast", width=16, epochs=3, batch_size=32, lr=0.05, device="cpu", threads=2,
                    cpu_amp=False)
    return default_config(dataset, **{**settings, **overrides})


def test_another_model_takes_its_measured_settings_on_the_dataset():
    assert default_config("cifake").model == "seed_cnn"
    fast = default_config("cifake", model="fast")
    assert (fast.width, fast.patch, fast.epochs, fast.batch_size) == (64, 2, 40, 512)
    two_scale = default_config("cifake", model="two_scale")
    assert two_scale.width is None and two_scale.patch is None


def test_on_a_gpu_the_default_trains_longer_and_the_demo_does_not(monkeypatch):
    import torch

    cpu = {name: default_config(name, device="cpu") for name in DATASETS}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # "auto" now finds a GPU
    gpu = {name: default_config(name) for name in DATASETS}
    assert gpu["cifake"].epochs == 100 > cpu["cifake"].epochs == 40
    assert gpu["cifake"].model == cpu["cifake"].model and gpu["cifake"].lr == cpu["cifake"].lr
    assert gpu["sneakers"].epochs > cpu["sneakers"].epochs
    assert gpu["demo"] == replace(cpu["demo"], device="auto")  # the demo stays as short as on a CPU
    assert default_config("cifake", model="fast").epochs == 40  # another model: its own setting


#: The configurations the committed results were trained with (before issue #33's rule), as
#: the fields that differ from TrainConfig's defaults: they must not move.
COMMITTED_CONFIGS = {
    ("demo", "fast"): dict(width=32, image_size=32, epochs=6),
    ("demo", "lite0_probe"): dict(model="lite0_probe", image_size=32, epochs=6),
    ("cifake", "seed_cnn"): dict(model="seed_cnn", image_size=32, epochs=40, batch_size=512, lr=0.1),
    ("cifake", "fast"): dict(width=64, patch=2, image_size=32, epochs=40, batch_size=512, lr=0.1),
    ("cifake", "cifake_paper"): dict(model="cifake_paper", image_size=32, epochs=40, batch_size=512, lr=0.1),
    ("cifake", "resnet18"): dict(model="resnet18", image_size=32, epochs=40, batch_size=512, lr=0.1),
    ("cifake", "lite0"): dict(model="lite0", image_size=32, epochs=4, lr=0.01),
    ("cifake", "lite0_probe"): dict(model="lite0_probe", image_size=32, epochs=40, lr=0.1),
    ("sneakers", "two_scale"): dict(model="two_scale", width=32, image_size=240, epochs=50, batch_size=64,
                                    translate=8, cutout=120),
    ("sneakers", "lite0"): dict(model="lite0", input_size=128, image_size=240, epochs=15, batch_size=32,
                                lr=0.01, translate=8, cutout=120),
    ("sneakers", "lite0_probe"): dict(model="lite0_probe", image_size=240, epochs=50, batch_size=64,
                                      translate=8, cutout=120),
}


@pytest.mark.parametrize(("dataset", "model"), sorted(COMMITTED_CONFIGS))
def test_the_committed_results_configurations_do_not_move(dataset, model):
    expected = TrainConfig(dataset=dataset, device="cpu", **COMMITTED_CONFIGS[dataset, model])
    assert default_config(dataset, model=model, device="cpu") == expected


def test_a_model_asked_for_by_name_inherits_nothing_of_the_default_model():
    """Issue #33: `fast` on CIFAKE took seed_cnn's epochs and batch; now a model takes
    TrainConfig's defaults, the dataset's image size and its own MODEL_SETTINGS entry."""
    plain = TrainConfig()
    fast = default_config("sneakers", model="fast", device="cpu")  # no setting of its own there
    assert fast == TrainConfig(dataset="sneakers", model="fast", image_size=240, device="cpu")
    assert (fast.epochs, fast.batch_size, fast.cutout, fast.width) == (plain.epochs, plain.batch_size, 0, None)
    seed = default_config("demo", model="seed_cnn", device="cpu")
    assert seed == TrainConfig(dataset="demo", model="seed_cnn", image_size=32, device="cpu")


def test_the_command_line_is_generated_from_trainconfig_and_refuses_unknown_flags(capsys):
    from dataclasses import fields

    from helpers.training import __main__ as cli
    from helpers.training.config import field_help

    parser = cli._parser()
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in fields(TrainConfig)} <= flags  # every field, none re-listed by hand
    assert all(field_help().values())  # every field says what it is
    args = parser.parse_args(["--dataset", "cifake", "--model", "fast", "--epochs", "3", "--no-amp",
                              "--lr", "0.2", "--cutout", "4", "--deterministic"])
    config = cli.config_of(args)
    assert config == replace(default_config("cifake", model="fast"), epochs=3, amp=False, lr=0.2, cutout=4,
                             deterministic=True)
    assert cli.config_of(parser.parse_args([])) == default_config("demo")  # unset: the dataset's default
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["--widht", "3"])
    assert refused.value.code == 2 and "--widht" in capsys.readouterr().err


def test_default_configs_exist_for_every_dataset():
    for name in DATASETS:
        config = default_config(name)
        assert config.dataset == name and config.epochs > 0 and config.model in models.MODELS
        assert config.image_size == get_spec(name).image_size


@pytest.mark.slow
def test_a_tiny_run_lowers_the_loss_and_fits_64_images(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "fit", n_per_class=32, layout="shoes")
    cache = prepare("demo", source, seed=0, progress=False)  # no JPEG step: raw pixels
    # train on all 64 images (4 of them double as the loop's validation split)
    cache.split[:] = 0
    cache.split[[0, 1, 62, 63]] = 1
    config = quick(epochs=20, batch_size=16, translate=0, flip=False, label_smoothing=0.0, lr=0.02)
    result = fit(cache, config, out_dir=tmp_path / "m", progress=False)
    history = result.history
    assert history["train_loss"].iloc[-1] < 0.5 * history["train_loss"].iloc[0]
    images, labels = cache.images, cache.labels
    assert len(images) == 64
    p = Detector.load(result.checkpoint).predict_proba(images)
    assert ((p >= 0.5) == labels).all()


def test_two_cpu_runs_with_the_same_seed_are_identical(tiny_cache, tmp_path):
    a = fit(tiny_cache, quick(), out_dir=tmp_path / "a", progress=False)
    b = fit(tiny_cache, quick(), out_dir=tmp_path / "b", progress=False)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    assert a.history[cols].equals(b.history[cols])
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_cache, tmp_path):
    whole = fit(tiny_cache, quick(epochs=4), out_dir=tmp_path / "whole", progress=False)

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(tiny_cache, quick(epochs=4), out_dir=tmp_path / "cut", progress=False, on_epoch=stop_after_two)
    assert (tmp_path / "cut" / "fast.last.pt").exists()
    resumed = fit(tiny_cache, quick(epochs=4), out_dir=tmp_path / "cut", progress=False)
    assert resumed.resumed_epochs == 2
    cols = ["train_loss", "val_loss", "val_acc"]
    assert np.allclose(whole.history[cols].to_numpy(), resumed.history[cols].to_numpy())
    assert whole.metrics == resumed.metrics


def test_checkpoint_round_trip(tiny_cache, tmp_path):
    result = fit(tiny_cache, quick(epochs=2), out_dir=tmp_path / "m", progress=False)
    detector = Detector.load(result.checkpoint)
    assert detector.data_fingerprint == tiny_cache.fingerprint and detector.image_size == 32
    # the whole run's time, not the time to the saved epoch
    assert detector.epochs_run == 2 and detector.train_seconds == pytest.approx(result.seconds)
    assert detector.threshold_source == "validation" and detector.name == "fast"
    images, _ = tiny_cache.part("val")
    trained = Detector(result.model, **{k: getattr(detector, k) for k in ("architecture", "dataset",
                       "image_size", "mean", "std", "config", "metrics", "data_fingerprint")})
    assert np.allclose(detector.predict_proba(images), trained.predict_proba(images), atol=1e-6)
    # saved again, it reads back the same
    again = Detector.load(detector.save(tmp_path / "again.pt"))
    assert again.checkpoint().keys() == detector.checkpoint().keys()
    assert (again.threshold, again.run_seconds, again.metrics) == (detector.threshold, detector.run_seconds,
                                                                   detector.metrics)
    (tmp_path / "broken.pt").write_bytes(result.checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.pt"):
        Detector.load(tmp_path / "broken.pt")
    with pytest.raises(FileNotFoundError, match="make train"):
        Detector.load(tmp_path / "models" / "missing.pt")


@pytest.mark.slow
def test_ddp_entry_point_with_two_gloo_processes(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "ddp", n_per_class=24)
    out = tmp_path / "ddp_models"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "helpers.training", "--dataset", "demo", "--data-source", str(source), "--epochs", "2",
           "--batch-size", "16", "--width", "16", "--device", "cpu", "--out-dir", str(out), "--quiet"]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout
    assert Detector.load(out / "fast.pt").config["epochs"] == 2


def test_augment_mirrors_and_shifts_with_reflection_like_numpy():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (10, 12, 9, 3), dtype=np.uint8)  # (N, H, W, 3); not square
    images = torch.from_numpy(stored).permute(0, 3, 1, 2)  # channels_last, as fit keeps them
    index, flips = torch.tensor([3, 0, 9, 3]), torch.tensor([False, True, False, True])
    shifts = torch.tensor([[0, 0], [2, -1], [-3, 3], [1, 2]])  # (rows, columns)
    out = augment(images, index, flips, shifts)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 12, 9)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for k in range(4):
        dy, dx = shifts[k].tolist()
        padded = np.pad(stored[index[k]], ((3, 3), (3, 3), (0, 0)), mode="reflect")
        expected = padded[3 + dy:3 + dy + 12, 3 + dx:3 + dx + 9]
        expected = expected[:, ::-1] if flips[k] else expected
        assert np.array_equal(out[k].permute(1, 2, 0).numpy(), expected), k


def test_cutout_greys_one_clipped_square_per_image_and_leaves_the_rest():
    plain = epoch_plan(40, TrainConfig(), epoch=0)
    plan = epoch_plan(40, TrainConfig(cutout=8), epoch=0)
    for a, b in zip(plain[:3], plan[:3]):
        assert torch.equal(a, b)  # switching Cutout on leaves the earlier draws as they were
    assert torch.equal(plain.centres, torch.zeros(40, 2)) and plan.centres.std() > 0.2
    images = torch.randint(0, 128, (2, 3, 20, 30), dtype=torch.uint8)  # never 128 by chance
    out = cut_out(images, torch.tensor([[0.5, 0.5], [0.0, 0.95]]), side=8)
    grey = out == 128
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.uint8
    assert torch.equal(grey[0, 0].nonzero().amin(0), torch.tensor([6, 11]))  # rows 6-13, cols 11-18
    assert grey[0].sum() == 3 * 8 * 8  # side x side, in every channel
    assert grey[1, 0].sum() == 4 * 6  # at the corner: rows 0-3, columns 24-29 (clipped)
    assert torch.equal(out[~grey], images[~grey])  # nothing else touched


def test_a_cpu_amp_checkpoint_is_scored_in_bfloat16_where_the_cpu_has_it(tiny_cache, tmp_path, monkeypatch):

    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)  # emulated where not native
    result = fit(tiny_cache, quick(epochs=1, cpu_amp=True), out_dir=tmp_path / "m", progress=False)
    detector = Detector.load(result.checkpoint)
    assert detector.cpu_amp is True
    images, _ = tiny_cache.part("val")
    bf16 = detector.predict_proba(images)
    as_fp32 = Detector.load(result.checkpoint)
    as_fp32.config = {**as_fp32.config, "cpu_amp": False}
    fp32 = as_fp32.predict_proba(images)
    assert not np.array_equal(bf16, fp32) and np.allclose(bf16, fp32, atol=0.05)
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: False)  # e.g. an AVX2-only CPU: fp32
    assert np.array_equal(detector.predict_proba(images), fp32)


def test_the_command_line_separates_the_split_seed_from_the_training_seed(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "cli", n_per_class=20)
    out = tmp_path / "cli_models"
    args = ["--dataset", "demo", "--data-source", str(source), "--epochs", "1", "--batch-size", "16",
            "--width", "8", "--device", "cpu", "--out-dir", str(out), "--quiet"]
    assert main([*args, "--seed", "0", "--split-seed", "1"]) == 0
    detector = Detector.load(out / "fast.pt")
    split_one = prepare("demo", source, seed=1, progress=False)
    assert detector.config["seed"] == 0 and detector.data_fingerprint == split_one.fingerprint
    assert split_one.fingerprint != prepare("demo", source, seed=0, progress=False).fingerprint


def test_the_command_line_fits_the_probe_at_the_input_size_asked(project_dirs, tmp_path):
    source = write_dataset(tmp_path / "cli_probe", n_per_class=20)
    out = tmp_path / "cli_probe_models"
    assert main(["--dataset", "demo", "--data-source", str(source), "--model", "lite0_probe",
                 "--input-size", "96", "--device", "cpu", "--out-dir", str(out), "--quiet"]) == 0
    detector = Detector.load(out / "lite0_probe.pt")
    assert detector.model_options == {"input_size": 96} and detector.model.input_size == 96
    assert detector.config["epochs"] == 1  # a probe is fitted in one pass


def test_a_compiled_run_saves_and_reloads_the_plain_model(tiny_cache, tmp_path, monkeypatch):
    # dynamo's aot_eager backend: the torch.compile wrapper without a C++ compiler, so the test
    # checks what compiling changes for the loop (state-dict names, saving, reloading), not inductor
    compile_fn = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module: compile_fn(module, backend="aot_eager"))
    result = fit(tiny_cache, quick(epochs=2, compile=True), out_dir=tmp_path / "c", progress=False)
    eager = fit(tiny_cache, quick(epochs=2), out_dir=tmp_path / "e", progress=False)
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert list(saved) == list(eager.model.state_dict())  # no "_orig_mod." prefixes
    model = Detector.load(result.checkpoint).model
    assert len(result.history) == 2
    for (name, x), y in zip(model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-3), name  # the same training, traced


def test_a_run_resumes_across_precisions_and_trains_in_float16_with_a_scaler(tiny_cache, tmp_path, monkeypatch):
    """Saved in fp32 (a disabled scaler's empty state), resumed where float16 needs a loss scaler
    (a GPU below sm_80: forced here on the CPU), then resumed in fp32 again: never a crash."""
    out = tmp_path / "m"

    def stop_at(last):
        def hook(epoch, row):
            if epoch == last:
                raise Interrupt
        return hook

    with pytest.raises(Interrupt):
        fit(tiny_cache, quick(epochs=3), out_dir=out, progress=False, on_epoch=stop_at(1))
    assert torch.load(out / "fast.last.pt", weights_only=True)["scaler"] == {}
    with monkeypatch.context() as forced:
        forced.setattr(accel, "amp_dtype", lambda device, cpu=False: torch.float16)
        with pytest.raises(Interrupt):
            fit(tiny_cache, quick(epochs=3), out_dir=out, progress=False, on_epoch=stop_at(2))
    state = torch.load(out / "fast.last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["scaler"]["scale"] > 0  # float16 ran with a live scaler
    resumed = fit(tiny_cache, quick(epochs=3), out_dir=out, progress=False)
    assert resumed.resumed_epochs == 2 and np.isfinite(resumed.history["train_loss"]).all()


def test_ddp_sets_each_gpu_before_nccl_and_waits_for_the_cache_past_nccls_timeout(monkeypatch):
    from datetime import timedelta

    from helpers.training import __main__ as cli

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(cli.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(cli.dist, "new_group", lambda **kw: calls.append(("group", kw)) or "cache group")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cli.init_distributed("auto") == "cache group"
    gpu = torch.device("cuda", 1)
    assert calls[:2] == [("set_device", gpu), ("init", {"backend": "nccl", "device_id": gpu})]
    assert calls[2][1]["backend"] == "gloo" and calls[2][1]["timeout"] >= timedelta(hours=1)
    calls.clear()
    cli.init_distributed("cpu")  # gloo for training too, no GPU touched
    assert calls[0] == ("init", {"backend": "gloo", "device_id": None})


def test_a_model_whose_validation_outputs_are_nan_is_never_saved(tiny_cache, tmp_path, monkeypatch):
    """What an overflowing float16 run leaves: NaN outputs. No epoch is saved as the detector,
    the run fails with the reason, and no resume point of it is kept."""
    from helpers.training import loop

    original = loop.predict_logits
    monkeypatch.setattr(loop, "predict_logits",
                        lambda *a, **k: original(*a, **k) * float("nan"))
    with pytest.raises(loop.NonFiniteModelError, match="validation outputs were NaN or infinite, "
                                                       "so no detector was saved"):
        fit(tiny_cache, quick(epochs=2), out_dir=tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "fast.pt").exists()
    assert not (tmp_path / "nan" / "fast.last.pt").exists()
