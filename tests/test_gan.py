"""The GAN: DCGAN and its data-efficient recipes (DiffAugment, hinge loss, EMA, projected D):
shapes, one training step, determinism, checkpoints, export and the notebook."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from helpers.data.cache import prepare
from helpers.gan.augment import diff_augment, parse_policy
from helpers.gan.config import PLAN, RECIPES, GANConfig, recipe_config
from helpers.gan.export import export_dir, export_images, load_exported, verify_export
from helpers.gan.monitor import EpochMonitor, load_checkpoint, save_checkpoint
from helpers.gan.networks import Discriminator, FastGenerator, Generator
from helpers.gan.plan import plan_run
from helpers.gan.train import GAN, STAT_KEYS, real_training_images, to_unit_range, train_gan
from tests.conftest import ROOT, textured, write_dataset

CPU = torch.device("cpu")

DEMO_BUDGET, CPU_BUDGET, CUDA_BUDGET = (PLAN.budgets[kind] for kind in ("demo", "cpu", "cuda"))


def probed_speed(monkeypatch, record: dict) -> list:
    """The plan's CPU speed probe answering ``record`` (images/s) without timing anything:
    the plan's arithmetic, not this machine's speed, is under test. Returns the probed configs."""
    import helpers.gan.plan as gan_plan

    probed = []
    monkeypatch.setattr(gan_plan, "gan_speed_probe", lambda config: probed.append(config) or dict(record))
    return probed
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


@pytest.mark.parametrize("resolution", [32, 64])
def test_fastgan_generator_shapes_widths_and_skip_excitation(resolution):
    G = FastGenerator(nz=100, ngf=16, resolution=resolution)
    images = G(torch.randn(5, 100))
    assert images.shape == (5, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert G.init[0].out_channels == 2 * 4 * 16 and G.to_rgb.in_channels == 8  # 4*ngf -> ngf/2, GLU halves
    # the skip-layer excitation gates the last map by the 4x4 one: a change there reaches the
    # output even with every up-sampling block's output held fixed
    G.eval()
    z = torch.randn(2, 100)
    first = G.init(z.view(2, -1, 1, 1) * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt().view(2, 1, 1, 1))
    last = first
    for up in G.ups:
        last = up(last)
    assert not torch.allclose(G.excite(first, last), G.excite(first + 1, last))
    # the latent is normalised: scaling it changes nothing
    assert torch.allclose(G(z), G(3 * z), atol=1e-5)


def test_unsupported_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match="32 or 64"):
        Generator(resolution=48)
    with pytest.raises(ValueError, match="32 or 64"):
        FastGenerator(resolution=128)
    with pytest.raises(ValueError, match="generator must be"):
        GANConfig(generator="stylegan")


def test_the_gan_settings_are_one_typed_config_with_named_presets():
    """Issue #33: the recipes are GANConfig presets, a misspelt setting is refused (never
    ignored), and the plan's numbers are read from one place (gan.config.PLAN)."""
    assert all(isinstance(preset, GANConfig) for preset in RECIPES.values())
    assert RECIPES["dcgan"] == GANConfig() and RECIPES["fastgan"].changes() == {
        "generator": "fastgan", "discriminator": "projected", "loss": "hinge",
        "augment": "color,translation,cutout", "ema_decay": 0.999, "beta1": 0.0, "beta2": 0.99}
    assert recipe_config("diffaug", ngf=8).ngf == 8 and RECIPES["diffaug"].ngf == 64  # presets stay
    with pytest.raises(TypeError, match=r"no fields \['nfg'\]"):
        recipe_config("dcgan", nfg=8)
    with pytest.raises(ValueError, match="unknown GAN recipe"):
        recipe_config("stylegan")
    assert GANConfig.from_dict({"ngf": 8, "removed_long_ago": 1}) == GANConfig(ngf=8)  # old checkpoints
    assert PLAN.budget(True, "cuda") is DEMO_BUDGET and PLAN.budget(False, "mps") == PLAN.budgets["mps"]
    assert PLAN.recipe(48) == PLAN.other_recipe


def test_paper_initialisation():
    model = GAN(GANConfig(ngf=16, ndf=16), CPU)
    conv = model.G.net[0].weight
    assert abs(conv.std().item() - 0.02) < 0.003 and abs(conv.mean().item()) < 0.002
    bn = model.D.net[3]
    assert isinstance(bn, torch.nn.BatchNorm2d) and abs(bn.weight.mean().item() - 1) < 0.01


def _d_loss(model: GAN, real: torch.Tensor, fake: torch.Tensor) -> float:
    with torch.no_grad():
        return model.losses(model.D(real), model.D(fake)).item()


def _real_batch(n: int = 16, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return to_unit_range(torch.from_numpy(np.stack([textured(rng, size, False) for _ in range(n)]))
                         .permute(0, 3, 1, 2))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_one_step_of_each_recipe_changes_both_networks(recipe):
    model = GAN(recipe_config(recipe, ngf=16, ndf=16, seed=0), CPU)
    trained_d = [p for p in model.D.parameters() if p.requires_grad]
    frozen_d = [p for p in model.D.parameters() if not p.requires_grad]
    before_g = [p.detach().clone() for p in model.G.parameters()]
    before_d = [p.detach().clone() for p in trained_d]
    before_frozen = [p.detach().clone() for p in frozen_d]
    stats = model.train_step(_real_batch())
    assert set(stats) == set(STAT_KEYS) and all(np.isfinite(list(stats.values())))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, model.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, trained_d))
    # a projected discriminator's Lite0 and random projection never move
    assert (len(frozen_d) > 0) == (RECIPES[recipe].discriminator == "projected")
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, frozen_d))


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_cpu_bf16_trains_in_bfloat16_and_samples_in_float32(cpu_bf16, monkeypatch):
    """``cpu_bf16`` puts the CPU training step under bfloat16 autocast (where the CPU has native
    bfloat16; emulated here when it has not); sampling stays fp32 so no output bit is lost."""
    from helpers.core import accel

    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: True)
    model = GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8, cpu_bf16=cpu_bf16), CPU)
    seen = []
    model.G.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    stats = model.train_step(_real_batch(8))
    assert all(np.isfinite(list(stats.values())))
    assert seen == [torch.bfloat16 if cpu_bf16 else torch.float32]
    assert all(p.dtype == torch.float32 for p in model.G.parameters())  # weights stay fp32
    sampled = []
    model.sampler.register_forward_hook(lambda _m, _i, out: sampled.append(out.dtype))
    model.generate(2)
    assert sampled == [torch.float32]


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_a_discriminator_step_lowers_its_loss_on_the_batch_it_saw(loss):
    model = GAN(GANConfig(ngf=16, ndf=16, seed=0, loss=loss), CPU)
    real = _real_batch()
    with torch.no_grad():
        fake = model.G(model.noise(16, torch.Generator().manual_seed(1)))  # a fixed batch
    loss_before = _d_loss(model, real, fake)
    model.train_step(real)
    assert _d_loss(model, real, fake) < loss_before


def test_hinge_and_bce_losses_are_the_published_ones():
    model = GAN(GANConfig(ngf=8, ndf=8, loss="hinge"), CPU)
    d_real, d_fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.25])
    assert model.losses(d_real, d_fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.25) / 2)
    assert model.losses(None, d_fake).item() == pytest.approx(-(-3.0 + 0.25) / 2)
    model.config.loss = "bce"
    assert model.losses(None, d_fake).item() == pytest.approx(
        torch.nn.functional.softplus(-d_fake).mean().item())  # -log sigmoid(D(G(z)))


def test_diff_augment_transforms_real_and_fake_alike_and_is_differentiable():
    ones = torch.ones(6, 3, 16, 16)
    for policy in ("translation", "cutout", "translation,cutout"):
        # the same random state moves and cuts the same pixels, whatever the batch holds
        a = diff_augment(ones, policy, torch.Generator().manual_seed(4))
        b = diff_augment(2 * ones, policy, torch.Generator().manual_seed(4))
        assert torch.equal(2 * a, b) and (a == 0).any() and (a == 1).any()
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    out = diff_augment(x * 2 - 1, "color,translation,cutout", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator learns through it
    assert not torch.equal(diff_augment(x, "color", torch.Generator().manual_seed(1)), x)
    assert parse_policy("") == () and parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        GAN(GANConfig(ngf=8, ndf=8, augment="colour"), CPU)


def test_the_discriminator_sees_real_and_fake_images_only_through_the_augmentation(monkeypatch):
    model = GAN(recipe_config("diffaug", ngf=8, ndf=8), CPU)
    seen = []

    def spy(images):
        seen.append(images.requires_grad)
        return diff_augment(images, model.augment_policy)

    monkeypatch.setattr(model, "augment", spy)
    inputs = []
    hook = model.D.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    model.train_step(_real_batch(8))
    hook.remove()
    # real (D step), fake detached (D step), fake with its graph (G step): three calls, three inputs
    assert seen == [False, False, True] and len(inputs) == 3


def test_the_ema_generator_differs_from_the_raw_one_and_makes_the_samples():
    model = GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8), CPU)
    assert model.sampler is model.G_ema.module
    for _ in range(12):
        model.train_step(_real_batch(8))
    raw = dict(model.G.named_parameters())
    assert any(not torch.equal(p, raw[name]) for name, p in model.G_ema.module.named_parameters())
    z = model.noise(4, torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.G_ema.module.eval()
        expected = ((model.G_ema.module(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        model.G.eval()
        raw_images = ((model.G(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    samples = torch.from_numpy(model.generate(4, seed=5)).permute(0, 3, 1, 2)
    assert torch.equal(samples, expected) and not torch.equal(samples, raw_images)
    assert GAN(GANConfig(ngf=8, ndf=8), CPU).sampler is not None  # no EMA: the raw generator


def test_projected_checkpoints_leave_lite0_out_and_round_trip(tmp_path):
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(16)])
    model, _ = train_gan(images, recipe_config("projected", ngf=8, batch_size=8, epochs=1), CPU,
                         progress=False)
    path = save_checkpoint(model, tmp_path / "gan.pt")
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("features.") for k in state["D"]) and "G_ema" in state
    loaded, _ = load_checkpoint(path)
    assert np.array_equal(loaded.generate(4, seed=1), model.generate(4, seed=1))
    batch = _real_batch(4)
    with torch.no_grad():
        model.D.eval(), loaded.D.eval()
        assert torch.allclose(loaded.D(batch), model.D(batch))


def test_training_is_deterministic_and_checkpoints_round_trip(tmp_path):
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(48)])
    config = GANConfig(ngf=8, ndf=8, batch_size=16, epochs=2, seed=3)
    runs = [train_gan(images, config, CPU, progress=False) for _ in range(2)]
    assert np.array_equal(runs[0][0].generate(6, seed=1), runs[1][0].generate(6, seed=1))
    model, history = runs[0]
    assert [h["epoch"] for h in history] == [1, 2] and len(model.step_log["loss_d"]) == 6
    path = save_checkpoint(model, tmp_path / "models" / "gan.pt", history=history)
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
    monitor = EpochMonitor(stale.parent, 3, grid_images=4, score=lambda g: {"fid": float(g.epoch)},
                           score_every=0, score_last=True, save_every=2,
                           checkpoint=results / "demo" / "models" / "gan.pt")
    _, history = train_gan(images, GANConfig(ngf=8, ndf=8, batch_size=16, epochs=3), CPU,
                           on_epoch=monitor, progress=False)
    # every second epoch and the last
    assert sorted(p.name for p in stale.parent.glob("*.png")) == ["epoch_002.png", "epoch_003.png"]
    assert [h.get("fid") for h in history] == [None, None, 3.0]  # scored after the last epoch only
    assert len(load_checkpoint(monitor.checkpoint)[1]["history"]) == 3
    total = history[-1]["train_seconds"]
    assert total == pytest.approx(sum(h["seconds"] for h in history))


def test_epoch_monitor_scores_at_marks_of_training_time(tmp_path):
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(32)])
    monitor = EpochMonitor(tmp_path, 6, score=lambda g: {"kid": float(g.epoch)}, save_every=100,
                           score_at_seconds=(0.0, 1e-9, 1e9))
    _, history = train_gan(images, GANConfig(ngf=8, ndf=8, batch_size=16, epochs=6), CPU,
                           on_epoch=monitor, progress=False)
    # both early marks fall in the first epoch (one score), the far one never comes
    assert [h.get("kid") for h in history] == [1.0, None, None, None, None, None]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["epoch_006.png"]


def test_train_gan_stops_at_a_training_time_budget():
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(32)])
    _, history = train_gan(images, GANConfig(ngf=8, ndf=8, batch_size=16, epochs=50), CPU,
                           progress=False, max_seconds=1e-9)
    assert len(history) == 1


def test_train_gan_rejects_images_at_the_wrong_resolution():
    with pytest.raises(ValueError, match="resize them first"):
        train_gan(np.zeros((8, 64, 64, 3), np.uint8), GANConfig(resolution=32), CPU)


def test_real_training_images_are_the_real_train_split_at_the_gan_resolution(project_dirs, tmp_path, monkeypatch):
    probed_speed(monkeypatch, {"fp32": 1e6})  # a fast CPU: the demo's full DEMO_BUDGET.epochs
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), progress=False)
    images, labels = cache.part("train")
    real = real_training_images(cache)
    assert real.shape == ((labels == 0).sum(), 32, 32, 3)
    assert np.array_equal(real, images[labels == 0])
    assert real_training_images(cache, 64).shape[1:] == (64, 64, 3)
    plan = plan_run(cache, CPU)  # the demo on a CPU: the small, fast settings
    n_real = int((labels == 0).sum())
    assert (plan.config.epochs, plan.config.ngf, plan.fid_samples, plan.n_real) == (DEMO_BUDGET.epochs, 32, 64, n_real)
    assert plan.recipe == PLAN.recipe(32) == "fastgan" and plan.config.discriminator == "projected"
    shoes_like = plan_run(cache, CPU, resolution=64, cpu_bf16=False)  # the study's best at 64 px too
    assert shoes_like.recipe == "fastgan" and shoes_like.config.generator == "fastgan"
    assert plan.config.batch_size == min(32, n_real)  # never more than the training images
    assert plan.n_export == int((cache.part("test")[1] == 0).sum()) and "epochs" in plan.auto
    assert plan_run(cache, CPU, epochs=3, width=64).config.ndf == 64


def _write_jpeg(path: Path, image: np.ndarray, tables: dict, subsampling: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", qtables=tables, subsampling=subsampling)


def test_exported_jpegs_carry_the_real_images_tables(project_dirs, tmp_path, monkeypatch):
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
    probed = probed_speed(monkeypatch, {"fp32": 50.0})
    plan = plan_run(cache, CPU, recipe="dcgan", batch_size=8)  # not the demo: the CPU time budget
    assert [(c.generator, c.batch_size, c.resolution) for c in probed] == [("dcgan", 8, 32)]
    per_step = PLAN.step_overhead * 8 / 50.0  # seconds, at the probed 50 images/s
    epoch_seconds = plan.n_real // 8 * per_step
    assert 0 <= CPU_BUDGET.seconds - plan.steps * per_step < epoch_seconds  # as many epochs as fit
    assert plan.fid_samples == plan.n_real // 2 and plan.score_every == -(-plan.config.epochs // 8)
    assert plan.config.epoch_steps == 0  # full passes: many fit the budget

    model = GAN(GANConfig(ngf=8, ndf=8), CPU)
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


def test_a_big_dataset_gets_short_epochs_so_the_budget_holds_its_scores(project_dirs, tmp_path, monkeypatch):
    """CIFAKE's 45,000 photos: one full pass of the 32-px default outlasts a CPU budget's
    eighth, so an epoch becomes a fixed number of steps, one score each, within the budget."""
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), progress=False)
    cache.meta["is_demo"] = False  # the CPU budget's rules, not the demo's
    n_real = int((cache.part("train")[1] == 0).sum())
    probed_speed(monkeypatch, {"fp32": 80.0})
    per_step = PLAN.step_overhead * 2 / 80.0
    budget_steps = int(CPU_BUDGET.seconds / per_step)
    plan = plan_run(cache, CPU, batch_size=2, scores=budget_steps // (n_real // 2 - 1))
    assert 0 < plan.config.epoch_steps < n_real // 2 and "epoch_steps" in plan.auto
    assert plan.steps_per_epoch == plan.config.epoch_steps and plan.score_every == 1
    assert budget_steps - plan.config.epoch_steps < plan.steps <= budget_steps
    model = GAN(recipe_config("dcgan", ngf=8, ndf=8, batch_size=2, epoch_steps=3), CPU)
    images = torch.from_numpy(real_training_images(cache)).permute(0, 3, 1, 2).contiguous()
    model.train_epoch(images)
    assert len(model.step_log["loss_d"]) == 3  # the epoch stopped after epoch_steps batches
    assert plan_run(cache, CPU, epochs=2, batch_size=2).config.epoch_steps == 0  # asked: full passes


def test_the_plan_takes_bfloat16_where_the_probe_measures_it_faster(project_dirs, tmp_path, monkeypatch):
    """A CPU run's length comes from this CPU's measured speed: twice the speed, twice the
    steps. 64-px runs take bfloat16 where it is native and pays, and then hold more steps;
    32-px runs stay fp32 unless asked; the demo and a GPU never run the probe."""
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), progress=False)
    cache.meta["is_demo"] = False  # the CPU budget's rules
    probed = probed_speed(monkeypatch, {"fp32": 100.0})  # a CPU without native bfloat16
    slow = plan_run(cache, CPU, resolution=64, batch_size=2)
    assert not slow.config.cpu_bf16 and [c.resolution for c in probed] == [64]
    assert "no native bfloat16; fp32 100 training images/s" in slow.table().loc["CPU speed probe", "value"]
    assert not plan_run(cache, CPU, resolution=64, batch_size=2, cpu_bf16=True).config.cpu_bf16  # not native
    probed_speed(monkeypatch, {"fp32": 200.0})
    assert abs(plan_run(cache, CPU, resolution=64, batch_size=2).steps / slow.steps - 2) < 0.05

    probed = probed_speed(monkeypatch, {"fp32": 100.0, "bf16": 150.0})
    fp32 = plan_run(cache, CPU, resolution=64, batch_size=2, cpu_bf16=False)
    auto = plan_run(cache, CPU, resolution=64, batch_size=2)
    assert not fp32.config.cpu_bf16 and auto.config.cpu_bf16 and "cpu_bf16" in auto.auto
    assert abs(auto.steps / fp32.steps - 1.5) < 0.05  # the measured speed-up buys steps
    assert "bfloat16 150, fp32 100" in auto.table().loc["CPU speed probe", "value"]
    assert plan_run(cache, CPU, batch_size=2).config.cpu_bf16 is False  # 32 px: fp32 unless asked
    assert plan_run(cache, CPU, batch_size=2, cpu_bf16=True).config.cpu_bf16  # asked, and native
    probed_speed(monkeypatch, {"fp32": 100.0, "bf16": 110.0})
    assert not plan_run(cache, CPU, resolution=64, batch_size=2).config.cpu_bf16  # too little gain: fp32
    probed = probed_speed(monkeypatch, {"fp32": 100.0, "bf16": 150.0})
    for accelerator in ("cuda", "mps"):  # no CPU probe; the accelerator's fixed length
        plan = plan_run(cache, torch.device(accelerator), resolution=64, batch_size=2)
        assert not plan.config.cpu_bf16 and plan.steps <= CUDA_BUDGET.steps < plan.steps + plan.steps_per_epoch
    assert probed == []


def test_the_demo_trains_its_gan_for_at_most_demo_seconds(project_dirs, tmp_path, monkeypatch):
    """The demo's GAN: its budget's epochs on a fast CPU, fewer (never none) where the measured
    speed would take longer than its seconds, so `make all` keeps its budget on a slower machine."""
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), progress=False)
    n_real = int((cache.part("train")[1] == 0).sum())
    probed_speed(monkeypatch, {"fp32": 1e6})
    assert plan_run(cache, CPU, batch_size=2).config.epochs == DEMO_BUDGET.epochs
    images = 2 * (n_real // 2) * 2  # 2 epochs of n_real // 2 steps of 2 images
    per_image = DEMO_BUDGET.seconds / images / PLAN.step_overhead  # the seconds that fit them in the demo's
    probed_speed(monkeypatch, {"fp32": 1.01 / per_image})  # just over 2 epochs' worth
    assert plan_run(cache, CPU, batch_size=2).config.epochs == 2
    probed_speed(monkeypatch, {"fp32": 1e-3})  # far too slow for one epoch: still one
    assert plan_run(cache, CPU, batch_size=2).config.epochs == 1
    assert plan_run(cache, CPU, batch_size=2, epochs=5).config.epochs == 5  # asked


def test_the_gan_speed_probe_times_each_native_precision_and_leaves_the_random_stream(monkeypatch):
    from helpers.core import accel
    from helpers.gan.plan import measure_gan_speed

    config = recipe_config("dcgan", ngf=8, ndf=8, batch_size=4)
    for native, timed in ((True, {"fp32", "bf16"}), (False, {"fp32"})):
        monkeypatch.setattr(accel, "cpu_has_bf16", lambda native=native: native)
        torch.manual_seed(3)
        expected = torch.rand(3)
        torch.manual_seed(3)
        rates = measure_gan_speed(config, steps=1)
        assert set(rates) == timed and min(rates.values()) > 0
        assert torch.equal(torch.rand(3), expected)


def test_the_gan_speed_probe_is_measured_once_per_configuration(project_dirs, monkeypatch):
    import helpers.gan.plan as gan_plan
    from helpers.core import precision_probe

    calls = []
    monkeypatch.setattr(gan_plan, "measure_gan_speed", lambda config: calls.append(config) or {"fp32": 9.0})
    monkeypatch.setattr(precision_probe, "load_per_core", lambda: 0.25)  # a quiet machine
    config = recipe_config("dcgan", ngf=8, ndf=8, batch_size=4)
    assert gan_plan.gan_speed_probe(config) == {"fp32": 9.0, "load_per_core": 0.25, "cached": False}
    assert gan_plan.gan_speed_probe(config) == {"fp32": 9.0, "load_per_core": 0.25, "cached": True}
    assert len(calls) == 1
    gan_plan.gan_speed_probe(recipe_config("dcgan", ngf=8, ndf=8, batch_size=8))  # another batch
    assert len(calls) == 2
    monkeypatch.setattr(precision_probe, "load_per_core", lambda: 1.7)  # busy: used for this run, not kept
    busy = gan_plan.gan_speed_probe(recipe_config("dcgan", ngf=8, ndf=8, batch_size=16))
    assert "load average 1.70" in busy["unsteady"] and len(calls) == 4  # measured twice
    assert "unsteady" in gan_plan.gan_speed_probe(recipe_config("dcgan", ngf=8, ndf=8, batch_size=16))


def test_png_datasets_are_exported_lossless_and_absent_exports_read_as_none(project_dirs, tmp_path):
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=16), progress=False)
    assert load_exported("demo") is None
    model = GAN(GANConfig(ngf=8, ndf=8), CPU)
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
                                           "BATCH_SIZE": 16, "FID_SAMPLES": 8, "N_EXPORT": 6,
                                           "CPU_BF16": False},  # asked: no speed probe
                               cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    run = results / "demo"
    assert (run / "models" / "gan.pt").exists()
    assert {p.name for p in (run / "generated_images").glob("*.png")} >= {
        "epoch_001.png", "epoch_002.png", "final_samples.png"}
    assert (run / "curves" / "gan_losses.png").exists() and (run / "curves" / "gan_quality.png").exists()
    metrics = json.loads((run / "gan_metrics.json").read_text())
    assert metrics["quality"]["n_fake"] == 8 and np.isfinite(metrics["quality"]["fid"])
    assert metrics["floor"]["n_fake"] == 8 and metrics["recipe"] == PLAN.recipe(32)
    manifest = json.loads((data_dir / "processed" / "demo" / "gan" / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["encoding"] == "PNG"


def test_a_run_ends_with_its_best_scored_epoch(tmp_path):
    """KID 0.5, 0.1, 0.3: the generator of epoch 2 makes the samples and fills the checkpoint."""
    images = np.stack([textured(np.random.default_rng(i), 32, False) for i in range(32)])
    samples = {}

    def score(gan):
        samples[gan.epoch] = gan.generate(3, seed=0)
        return {"kid": [0.5, 0.1, 0.3][gan.epoch - 1]}

    monitor = EpochMonitor(tmp_path / "grids", 3, score=score, score_every=1,
                           checkpoint=tmp_path / "gan.pt", checkpoint_extra={})
    model, history = train_gan(images, recipe_config("diffaug", ngf=8, ndf=8, batch_size=16, epochs=3),
                               CPU, on_epoch=monitor, progress=False)
    assert monitor.selected["epoch"] == 2 and [h["kid"] for h in history] == [0.5, 0.1, 0.3]
    assert not np.array_equal(samples[2], samples[3])
    assert np.array_equal(model.generate(3, seed=0), samples[2])
    loaded, state = load_checkpoint(tmp_path / "gan.pt")
    assert state["selected_epoch"] == 2 and np.array_equal(loaded.generate(3, seed=0), samples[2])
    assert model.epoch == 3  # it trained for three epochs; it samples from the second


# --------------------------------------------------------------------------- CUDA and MPS branches
# Forced on the CPU by standing in for accel.amp_dtype's answer; the real-GPU twins are marked cuda.


def _force_amp(monkeypatch, dtype: torch.dtype) -> None:
    """Every device 'trains' in ``dtype`` (float16: a CUDA GPU below sm_80; bfloat16: from sm_80)."""
    from helpers.core import accel

    monkeypatch.setattr(accel, "amp_dtype", lambda device, cpu=False: dtype)


def test_a_float16_gan_step_scales_each_networks_loss(monkeypatch):
    _force_amp(monkeypatch, torch.float16)
    model = GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8), CPU)
    assert model.scaler_d.is_enabled() and model.scaler_g.is_enabled()
    seen = []
    model.G.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in model.G.parameters()]
    stats = model.train_step(_real_batch(8))
    assert seen == [torch.float16] and all(np.isfinite(list(stats.values())))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.G.parameters()))
    assert model.scaler_g.get_scale() > 1 and all(p.dtype == torch.float32 for p in model.G.parameters())


def test_a_gan_state_resumes_across_precisions(monkeypatch):
    fp32 = GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8), CPU)
    fp32.train_step(_real_batch(8))
    assert fp32.state_dict()["scaler_g"] == {}  # a disabled scaler's state
    with monkeypatch.context() as forced:
        _force_amp(forced, torch.float16)
        fp16 = GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8), CPU)
        fp16.load_state_dict(fp32.state_dict())  # GradScaler.load_state_dict raises on {}
        assert fp16.scaler_g.get_scale() == torch.amp.GradScaler("cpu").get_scale()
        fp16.train_step(_real_batch(8))
        state = fp16.state_dict()
    assert state["scaler_d"]["scale"] > 0
    GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8), CPU).load_state_dict(state)  # and back


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_samples_are_fp32_wherever_training_autocasts(monkeypatch, dtype):
    """Sampling, and with it the export and the FID/KID scores, is fp32 on every device; on a
    GPU it once ran in the training's bfloat16."""
    _force_amp(monkeypatch, dtype)
    model = GAN(recipe_config("diffaug", ngf=8, ndf=8, batch_size=8), CPU)
    trained, sampled = [], []
    hook = model.G.register_forward_hook(lambda _m, _i, out: trained.append(out.dtype))
    model.train_step(_real_batch(8))
    hook.remove()
    model.sampler.register_forward_hook(lambda _m, _i, out: sampled.append(out.dtype))
    model.generate(3)
    assert trained == [dtype] and sampled == [torch.float32]


def _old_ema(decay: float):
    """The AveragedModel ``avg_fn`` the GAN used before :class:`helpers.gan.ema.EMA`."""
    def ema(averaged, current, n):
        beta = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged + (current - averaged) * (1.0 - beta)
    return ema


def _no_host_reads(monkeypatch) -> None:
    """Any read of a tensor's value on the host (what waits for a GPU) raises."""
    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read back on the host")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_the_ema_is_averaged_models_bit_for_bit_and_reads_nothing_back(monkeypatch):
    from torch.optim.swa_utils import AveragedModel

    from helpers.gan.ema import EMA

    torch.manual_seed(0)
    G = FastGenerator(nz=16, ngf=8, resolution=32)
    ours, theirs = EMA(G, 0.999), AveragedModel(G, avg_fn=_old_ema(0.999), use_buffers=True)
    for _ in range(6):
        with torch.no_grad():
            for t in [*G.parameters(), *G.buffers()]:
                t.add_(torch.randn_like(t) if t.is_floating_point() else torch.ones_like(t))
        ours.update_parameters(G)
        theirs.update_parameters(G)
    mine, old = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(old) and all(torch.equal(mine[k], old[k]) for k in old)
    reloaded = EMA(G, 0.999)
    reloaded.load_state_dict(old)  # an AveragedModel checkpoint loads as it is
    assert reloaded.count == 6 and reloaded.beta() == ours.beta()
    with monkeypatch.context() as watched:
        _no_host_reads(watched)
        for _ in range(3):
            ours.update_parameters(G)
    assert ours.count == 9


def test_diff_augment_draws_on_the_batch_device_without_copies_or_reads(monkeypatch):
    from helpers.gan import augment

    x = torch.empty(4, 3, 16, 16, device="meta")  # stands in for a GPU batch: no host data
    real_to = torch.Tensor.to

    def no_transfer(self, *args, **kwargs):
        target = next((a for a in (*args, kwargs.get("device")) if isinstance(a, (str, torch.device))), None)
        if target is not None and torch.device(target) != self.device:
            raise AssertionError(f"copied {self.device} -> {target}")
        return real_to(self, *args, **kwargs)

    with monkeypatch.context() as watched:
        _no_host_reads(watched)
        watched.setattr(torch.Tensor, "to", no_transfer)
        out = diff_augment(x, "color,translation,cutout")
    assert out.shape == x.shape and out.device.type == "meta"
    # on the CPU the numbers are those of the CPU stream as before: float32 draws, then cast
    cpu = torch.zeros(5, 3, 4, 4, dtype=torch.bfloat16)
    drawn = augment._rand(5, cpu, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.rand(5, 1, 1, 1, generator=torch.Generator().manual_seed(3)).bfloat16())
    torch.manual_seed(1)
    drawn = augment._randint(-2, 3, 5, cpu, None)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.randint(-2, 3, (5, 1, 1)))


def test_the_demo_is_as_short_on_a_gpu_or_mac_as_on_a_cpu(project_dirs, tmp_path, monkeypatch):
    """A GPU's demo once trained a GPU run's steps and scored 5,000 images ten times; now it is
    the CPU demo's plan: the demo budget's epochs of the narrow network, one score of 64 images."""
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), progress=False)
    probed = probed_speed(monkeypatch, {"fp32": 1e6})  # a CPU fast enough for all DEMO_BUDGET.epochs
    cpu = plan_run(cache, CPU, batch_size=2)
    assert len(probed) == 1
    for accelerator in ("cuda", "mps"):
        plan = plan_run(cache, torch.device(accelerator), batch_size=2)
        assert plan.config == cpu.config and plan.config.epochs == DEMO_BUDGET.epochs
        assert (plan.fid_samples, plan.score_every, plan.steps) == (cpu.fid_samples, cpu.score_every, cpu.steps)
    assert len(probed) == 1  # an accelerator runs no CPU probe


@pytest.mark.cuda
def test_a_gan_step_on_the_gpu_never_waits_for_the_host():
    from helpers.core import accel
    from helpers.gan.ema import EMA

    device = torch.device("cuda")
    model = GAN(recipe_config("fastgan", ngf=16, ndf=16, batch_size=16), device)
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert model.scaler_g.is_enabled() is not native  # float16 + a scaler below sm_80
    real = _real_batch(16).to(device)
    assert accel.count_host_syncs(lambda: diff_augment(real), warmup=1, repeats=3) == []
    ema = EMA(model.G, 0.999)
    assert accel.count_host_syncs(lambda: ema.update_parameters(model.G), warmup=2, repeats=3) == []
    assert accel.count_host_syncs(lambda: model.step(real), warmup=2, repeats=3) == []
    assert model.generate(4).dtype == np.uint8  # sampled in fp32
