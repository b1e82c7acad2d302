"""The generalist and the leave-one-generator-out protocol (helpers.training.generalist), and
the NPR input (helpers.core.npr), on tiny synthetic sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.core.detector import best_path
from helpers.core.models import build_model
from helpers.core.npr import npr_residual
from helpers.training import generalist as G


def test_npr_is_the_image_minus_its_nearest_neighbour_copy():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    r = npr_residual(x)
    assert r.shape == x.shape and r.dtype == x.dtype
    # the top-left pixel of every 2x2 cell is its own copy; the others differ from it
    assert torch.equal(r[..., ::2, ::2], torch.zeros_like(r[..., ::2, ::2]))
    assert torch.equal(r[..., 0, 1], x[..., 0, 1] - x[..., 0, 0])
    assert torch.equal(r[..., 1, 1], x[..., 1, 1] - x[..., 0, 0])
    assert torch.count_nonzero(npr_residual(torch.full((1, 3, 8, 8), 0.7))) == 0
    with pytest.raises(ValueError, match="even"):
        npr_residual(torch.zeros(1, 3, 5, 6))


def test_the_npr_model_sees_the_residual_only():
    model = build_model("npr", 32, width=8).eval()
    model.logit_scale = 1000.0  # logits of order 1, not 1e-6, so that the tolerances mean something
    x = torch.rand(2, 3, 32, 32)
    cells = x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)
    # adding a constant per 2x2 cell leaves the residual, hence the logit, unchanged
    with torch.no_grad():
        assert torch.allclose(model(x), model(x + cells), atol=1e-5)
        assert not torch.allclose(model(x), model(torch.rand(2, 3, 32, 32)), atol=1e-5)
    assert model.cam_candidates  # Grad-CAM has its layers (the model contract)


def _pair(name: str, rng: np.random.Generator, kind: int) -> G.Pair:
    """A tiny synthetic generator: REAL noise, FAKE noise with a generator-specific pattern."""
    parts = {}
    for split, n in {"train": 24, "val": 8, "test": 12}.items():
        real = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fake = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fake[:, kind::3, ::2] = 200  # each generator its own periodic trace
        labels = np.repeat(np.array([0, 1], np.uint8), n)
        parts[split] = (np.concatenate([real, fake]), labels, np.full(2 * n, 32.0))
    return G.Pair(name, parts, f"synthetic-{name}")


@pytest.fixture
def synthetic_pairs():
    rng = np.random.default_rng(0)
    return {name: _pair(name, rng, k) for k, name in enumerate(("ga", "gb", "gc"))}


def test_the_folds_leave_each_generator_out_once():
    folds = G.folds(["a", "b", "c"])
    assert folds[0] == ("all", ["a", "b", "c"])
    assert [f for f, _ in folds[1:4]] == ["without a", "without b", "without c"]
    assert all(g not in trained for (f, trained), g in zip(folds[1:4], "abc"))
    assert folds[4:] == [("only a", ["a"]), ("only b", ["b"]), ("only c", ["c"])]


def test_the_leave_one_out_matrix_has_its_shape_and_diagonal(project_dirs, synthetic_pairs):
    torch_threads = torch.get_num_threads()
    table = G.run_study(synthetic_pairs, ["fast"], epochs=1, batch_size=16, device="cpu", threads=1,
                        cpu_amp=False, width=8)
    torch.set_num_threads(torch_threads)
    n = len(synthetic_pairs)
    assert len(table) == n + n + n * n  # all on every pair; each fold on its held-out; each single on all
    held = table[table["fold"].str.startswith("without")]
    assert list(held["test_generator"]) == list(synthetic_pairs) and not held["seen"].any()
    single = table[table["fold"].str.startswith("only")]
    diagonal = single["fold"].str.removeprefix("only ") == single["test_generator"]
    assert (single["seen"] == diagonal).all() and diagonal.sum() == n
    assert table.loc[table["fold"] == "all", "seen"].all()
    for metric in ("auc", "ap"):
        assert ((table[f"{metric}_low"] <= table[metric]) & (table[metric] <= table[f"{metric}_high"])).all()
    assert (table[["n_real", "n_fake"]] == 12).all().all()
    _, results = project_dirs
    saved = pd.read_csv(results / "generalist" / "held_out.csv")
    assert len(saved) == len(table)
    # the generalist is what predict and the app find for --dataset generalist
    assert best_path("generalist").name == "fast.pt"
    summary = G.summary(table)
    assert list(summary["cells"]) == [n, n, n * (n - 1)]


def test_predict_and_the_app_offer_the_generalist(project_dirs, synthetic_pairs, tmp_path, capsys):
    from PIL import Image

    from helpers.core.detector import Detector
    from helpers.tools import predict

    threads = torch.get_num_threads()
    G.run_study({k: synthetic_pairs[k] for k in ("ga", "gb")}, ["npr"], epochs=1, batch_size=16,
                device="cpu", threads=1, cpu_amp=False, width=8)
    torch.set_num_threads(threads)
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic_pairs["ga"].parts["test"][0][0]).save(image)
    assert predict.main([str(image), "--dataset", "generalist", "--csv", str(tmp_path / "out.csv")]) == 0
    said = capsys.readouterr()
    assert "trained on generalist" in said.out + said.err
    assert len(pd.read_csv(tmp_path / "out.csv")) == 1
    app = pytest.importorskip("helpers.tools.app")
    rows = app.held_out_scores(Detector.load(best_path("generalist")))
    assert list(rows["source"]) == ["ga (left out)", "gb (left out)"]
    assert rows["auc"].between(0, 1).all()


def test_pairs_sharing_photos_get_disjoint_ones(project_dirs, monkeypatch):
    """sd14 and fastgan both use CIFAR-10 photos: each gets its own, the same in every run."""
    from helpers.data.cache import prepare
    from tests.conftest import write_dataset

    data, _ = project_dirs
    cache = prepare("cifake", write_dataset(data.parent / "tiny", n_per_class=40), progress=False)
    fakes = np.random.default_rng(1).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(G, "load_exported", lambda dataset, size: fakes)  # notebook 04's export
    sd, gan = G.load_pair(G.GENERATORS["sd14"]), G.load_pair(G.GENERATORS["fastgan"])
    assert G.load_pair(G.GENERATORS["fastgan"]).fingerprint == gan.fingerprint
    for split in ("train", "val", "test"):
        real_sd = sd.parts[split][0][sd.parts[split][1] == 0]
        real_gan = gan.parts[split][0][gan.parts[split][1] == 0]
        seen = {img.tobytes() for img in real_sd}
        assert not any(img.tobytes() in seen for img in real_gan)
    total = sum(int((p.parts[s][1] == 0).sum()) for p in (sd, gan) for s in ("train", "val", "test"))
    assert total == int((cache.labels[cache.split >= 0] == 0).sum())
    assert sum(len(gan.parts[s][1]) - int((gan.parts[s][1] == 0).sum()) for s in gan.parts) == 30
