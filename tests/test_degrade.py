"""Training-time degradations (helpers.training.degrade), their place in the training loop,
and notebook 05's severity curves (helpers.evaluation.robustness.severity_table)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.core.detector import Detector, best_path, overview
from helpers.core.postprocess import (
    centre_crop,
    gaussian_blur,
    jpeg_compress,
    perturbations,
    perturbed_sets,
    rescale,
    severity_grid,
    validation_robustness,
)
from helpers.core.selection import WORST_CASE_MARGIN, kind_note, robustness_key
from helpers.core.stats import stratified_subset
from helpers.data.cache import prepare
from helpers.evaluation import figures
from helpers.evaluation.robustness import robustness_table, severity_table, worst_case
from helpers.training import degrade as d
from helpers.training.batches import TrainingBatches
from helpers.training.config import default_config
from helpers.training.loop import fit
from tests.conftest import write_dataset


def batch(n=16, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images (a blur of noise) so that degradations are measurable, not only noise
    x = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def test_every_recipe_keeps_shape_dtype_range_and_follows_the_seed():
    x = batch()
    for name in d.RECIPES:
        a = d.degrade(x, name, torch.Generator().manual_seed(1))
        b = d.degrade(x, name, torch.Generator().manual_seed(1))
        assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b), name
        if name != "none":
            c = d.degrade(x, name, torch.Generator().manual_seed(2))
            assert not torch.equal(a, c), f"{name}: another seed, other draws"
            assert (a != x).flatten(1).any(1).sum() > 0, f"{name} changed nothing"


def test_each_degradation_is_the_identity_at_zero_severity():
    x, n = batch(), 16
    assert torch.equal(d.gaussian_blur(x, torch.zeros(n)), x)
    assert torch.equal(d.rescale(x, torch.ones(n), torch.randint(3, (n,))), x)
    assert torch.equal(d.crop_resize(x, torch.ones(n), torch.rand(n, 2)), x)
    assert torch.equal(d.jpeg(x, torch.zeros(n, dtype=torch.long)), x)
    # and only the images with a severity are touched
    sigmas = torch.zeros(n)
    sigmas[3] = 1.5
    out = d.gaussian_blur(x, sigmas)
    assert torch.equal(out[:3], x[:3]) and torch.equal(out[4:], x[4:]) and not torch.equal(out[3], x[3])


def test_tensor_degradations_follow_notebook_05s_definitions():
    """The tensor versions (training) and the Pillow versions (evaluation) agree closely."""
    x = batch(8, 64)
    images = x.permute(0, 2, 3, 1).numpy()
    n = len(x)
    pairs = [(d.gaussian_blur(x, torch.full((n,), 1.0)), gaussian_blur(images, 1.0)),
             (d.rescale(x, torch.full((n,), 0.5)), rescale(images, 0.5)),
             (d.crop_resize(x, torch.full((n,), 0.75)), centre_crop(images, 0.75))]
    for ours, pillow in pairs:
        diff = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - pillow.astype(int))
        assert diff.mean() < 3, diff.mean()
    q = d.jpeg(x, torch.full((n,), 50)).permute(0, 2, 3, 1).numpy().astype(int)
    pillow = jpeg_compress(images, 50).astype(int)
    assert np.abs(q - pillow).mean() < 0.25 * np.abs(pillow - images.astype(int)).mean()


def test_real_and_fake_images_are_degraded_alike(project_dirs, tmp_path):
    """The draws never look at the labels: the same batch, relabelled, is degraded the same."""
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=20), seed=0, progress=False)
    images, labels = cache.part("train")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    config = default_config("demo", degrade="all", batch_size=16, device="cpu", translate=0, flip=False)
    out = {}
    for name, y in (("labels", labels), ("flipped", 1 - labels)):
        b = TrainingBatches(x, torch.from_numpy(y.astype(np.float32)), torch.zeros(3), torch.ones(3), config)
        out[name] = [xb for xb, _ in b.epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(out["labels"], out["flipped"]))
    plain = TrainingBatches(x, torch.from_numpy(labels.astype(np.float32)), torch.zeros(3), torch.ones(3),
                            default_config("demo", batch_size=16, device="cpu", translate=0, flip=False))
    changed = [(a != b).flatten(1).any(1) for a, b in zip(out["labels"], (xb for xb, _ in plain.epoch(0)))]
    ys = [yb for _, yb in plain.epoch(0)]
    hit = torch.cat(changed)
    y = torch.cat(ys)
    assert hit[y == 1].any() and hit[y == 0].any()


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match="cnndet"):
        d.recipe("sharpen")


@pytest.mark.slow
def test_a_tiny_run_with_degradations_saves_its_recipe_and_its_worst_case(project_dirs, tmp_path):
    cache = prepare("demo", write_dataset(tmp_path / "tiny", n_per_class=40), seed=0, progress=False)
    settings = dict(model="fast", width=16, epochs=2, batch_size=32, device="cpu", threads=2, cpu_amp=False)
    clean = fit(cache, default_config("demo", **settings), progress=False)
    robust = fit(cache, default_config("demo", degrade="cnndet", **settings), progress=False)
    assert clean.checkpoint.name == "fast.pt" and robust.checkpoint.name == "fast-cnndet.pt"
    detector = Detector.load(robust.checkpoint)
    assert detector.config["degrade"] == "cnndet" and np.isfinite(robust.history["train_loss"]).all()
    # each checkpoint carries its worst case under notebook 05's protocol on validation: the
    # figures of notebook 05's own table on the same images
    images, labels = cache.part("val")
    for run in (clean, robust):
        det = Detector.load(run.checkpoint)
        table = robustness_table(det, perturbed_sets(images), labels)
        perturbed = table[table["condition"] != "clean"]
        assert det.robustness == {
            "split": "val", "n_images": len(labels),
            "clean_accuracy": pytest.approx(table.loc[table["condition"] == "clean", "accuracy"].iloc[0]),
            "worst_accuracy": pytest.approx(perturbed["accuracy"].min()),
            "worst_condition": det.robustness["worst_condition"]}
        assert det.robustness["worst_condition"] in set(
            perturbed.loc[perturbed["accuracy"] == perturbed["accuracy"].min(), "condition"])


def _saved(folder, name, val_acc, robustness=None, degrade="none"):
    from helpers.core.models import build_model

    det = Detector(build_model("fast", 32, width=8).eval(), "fast", "demo", 32, [0.5] * 3, [0.25] * 3,
                   {"degrade": degrade}, {"val_acc": val_acc, "val_loss": 0.1}, "abc",
                   model_options={"width": 8}, robustness=robustness)
    return det.save(folder / f"{name}.pt")


def _figures(clean, worst, condition="blur sigma 1"):
    return {"split": "val", "n_images": 100, "clean_accuracy": clean, "worst_accuracy": worst,
            "worst_condition": condition}


def test_users_get_the_best_worst_case_on_validation_then_the_best_accuracy(project_dirs):
    folder = project_dirs[1] / "demo" / "models"
    folder.mkdir(parents=True)
    old_robust = _saved(folder, "fast-all", 0.99, degrade="all")  # older: not measured
    _saved(folder, "fast", 0.98, _figures(0.98, 0.62))
    robust = _saved(folder, "fast-cnndet", 0.95, _figures(0.95, 0.90), degrade="cnndet")
    assert best_path("demo") == robust  # measured ones outrank the unmeasured, whatever the flag
    assert best_path("demo", robust=False) == old_robust  # the validation rule alone
    _saved(folder, "fast-odd", 0.50, _figures(0.50, 0.95))  # the clean accuracy counts as a condition
    _saved(folder, "fast-nan", 0.99, _figures(float("nan"), 0.99))  # not a measurement
    assert best_path("demo") == robust
    # a worst case within the noise margin of the best: the better validation accuracy wins
    near = _saved(folder, "fast-light", 0.96, _figures(0.96, 0.90 - WORST_CASE_MARGIN / 2), degrade="cnndet_p01")
    _saved(folder, "fast-far", 0.97, _figures(0.97, 0.90 - 2 * WORST_CASE_MARGIN))
    assert best_path("demo") == near
    rows = {r["detector"]: r for r in overview("demo")}
    assert [name for name, r in rows.items() if r["default of predict"]] == ["fast-light"]
    assert np.isnan(rows["fast-all"]["worst case on validation"]) and rows["fast"]["worst condition"] == "blur sigma 1"


def test_without_measurements_the_flag_and_validation_decide(project_dirs):
    folder = project_dirs[1] / "demo" / "models"
    folder.mkdir(parents=True)
    clean = _saved(folder, "fast", 0.99)
    robust = _saved(folder, "fast-all", 0.90, degrade="all")
    assert best_path("demo") == robust and best_path("demo", robust=False) == clean


def test_the_kind_note_reads_the_measurement_when_there_is_one():
    assert robustness_key(_figures(0.95, 0.90)) == 0.90 and robustness_key(None) is None
    assert robustness_key({"worst_accuracy": 0.9}) is None  # partial: not a measurement
    assert robustness_key(_figures(0.95, float("nan"))) is None
    note = kind_note({"degrade": "none"}, _figures(0.98, 0.62))
    assert note.startswith("specialist") and note.endswith("worst 62.0% under blur sigma 1")
    assert kind_note({"degrade": "all"}, {"worst_accuracy": 0.9}) == "robust: trained with degradations 'all'"


def test_validation_robustness_is_the_protocol_on_a_stratified_subsample():
    from helpers.core.models import build_model

    torch.manual_seed(0)
    det = Detector(build_model("fast", 32, width=8).eval(), "fast", "demo", 32, [0.5] * 3, [0.25] * 3,
                   {}, {"val_acc": 0.9}, "abc")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 1] * 10)
    got = validation_robustness(det, images, labels, max_images=12)
    keep = stratified_subset(labels, 12, 0)
    table = worst_case(robustness_table(det, perturbed_sets(images[keep]), labels[keep])).iloc[0]
    assert got["n_images"] == 12 and labels[keep].sum() == 8  # the class shares kept
    assert got["clean_accuracy"] == pytest.approx(table["clean_accuracy"])
    assert got["worst_accuracy"] == pytest.approx(table["worst_accuracy"])
    assert got["worst_condition"] in {p.name for p in perturbations()}


def test_severity_curves_run_and_plot(tmp_path):
    from helpers.core.models import build_model

    torch.manual_seed(0)
    det = Detector(build_model("fast", 32, width=8).eval(), "fast", "demo", 32, [0.5] * 3, [0.25] * 3,
                   {}, {"val_acc": 0.9}, "abc", path=tmp_path / "fast.pt")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.array([0, 1] * 10)
    grid = severity_grid({"blur": (0.0, 1.0), "rescale_jpeg": (50, 100)})
    table = severity_table([det], images, labels, grid, batch_size=8, n_bootstrap=50)
    assert list(table["family"]) == ["blur", "blur", "rescale_jpeg", "rescale_jpeg"]
    assert (table["acc_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["acc_high"]).all()
    assert severity_grid({"blur": (0.0,)})[0](images) is not images
    assert np.array_equal(severity_grid({"blur": (0.0,)})[0](images), images)
    fig = figures.plot_severity(table, "blur")
    assert len(fig.axes) == 2
