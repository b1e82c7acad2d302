"""The domain check (#35): fitted with the detector, saved with it, said by predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.core.detector import Detector
from helpers.core.domain import DomainCheck, fit_domain_check, stats_features
from helpers.tools import predict
from tests.conftest import textured, train_tiny_detector


def blobs(rng: np.random.Generator, size: int, fake: bool) -> np.ndarray:
    """A smooth random picture (a 4x4 colour grid, bilinearly enlarged); FAKE ones carry a
    faint periodic pattern."""
    from PIL import Image

    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR), np.float32)
    img += rng.normal(0, 4, img.shape)
    if fake:
        img[::2, ::2] += 12
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny `fast` detector trained on smooth pictures (its domain check fitted by
    helpers.training), its source and cache."""
    from PIL import Image

    root = tmp_path_factory.mktemp("domain")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 8)):
        for label in ("REAL", "FAKE"):
            folder = root / "source" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(blobs(rng, 32, label == "FAKE")).save(folder / f"{label.lower()}{i:03d}.png")
    return train_tiny_detector(root, "cifake")


def test_stats_features_shape_and_constant_image():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    feats = stats_features(np.concatenate([images, np.full((1, 32, 32, 3), 7, np.uint8)]))
    assert feats.shape == (4, 3 * 16 + 12) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:, :48].reshape(4, 3, 16).sum(-1), 1.0, atol=1e-6)  # shares of pixels


def test_fit_rejects_bad_input():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown domain features"):
        fit_domain_check(images, images, "nope")
    with pytest.raises(ValueError, match="needs training and validation"):
        fit_domain_check(images, images[:0], "stats")


def test_resize_rule():
    check = DomainCheck("stats", [], threshold=1.0, side_range=(32.0, 32.0))
    assert check.resized_out([32, 64, 65, 16, 15, np.nan]).tolist() == [False, False, True, False, True, False]
    assert not DomainCheck("stats", [], 1.0).resized_out([4000]).any()  # no range recorded: no rule


def test_check_passes_its_training_images_and_flags_foreign_ones(trained):
    cache = trained["cache"]
    detector = Detector.load(trained["checkpoint"])
    assert detector.domain is not None and detector.domain.features == "lite0"
    assert detector.domain.side_range == (32.0, 32.0)
    train_images, _ = cache.part("train")
    _, inside = detector.in_domain(train_images, np.full(len(train_images), 32.0))
    assert inside.astype(bool).mean() >= 0.9
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    constant = np.full((4, 32, 32, 3), 128, np.uint8)
    other_dataset = np.stack([textured(rng, 32, i % 2 == 1) for i in range(8)])  # tests/conftest.py's
    for foreign in (noise, constant, other_dataset):
        score, inside = detector.in_domain(foreign)
        assert not inside.astype(bool).any()
        assert (score > detector.domain.threshold).all()
    # a training image taken from a 4000-pixel file: outside by the resize rule alone
    assert detector.in_domain(train_images[:1], [4000.0])[1].tolist() == [False]


def test_check_round_trips_through_the_checkpoint(trained, tmp_path):
    detector = Detector.load(trained["checkpoint"])
    images = trained["cache"].part("val")[0]
    copy = Detector.load(detector.save(tmp_path / "copy.pt"))
    assert copy.domain.state()["threshold"] == detector.domain.threshold
    np.testing.assert_array_equal(copy.in_domain(images)[0], detector.in_domain(images)[0])


def test_older_checkpoint_without_check_loads_and_says_so(trained, tmp_path, capsys):
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    del ckpt["domain"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    detector = Detector.load(old)
    assert detector.domain is None and detector.domain_status.startswith("missing")
    score, inside = detector.in_domain(trained["cache"].part("val")[0][:2])
    assert np.isnan(score).all() and list(inside) == [None, None]
    image = trained["source"] / "test" / "REAL"
    out = tmp_path / "old.csv"
    assert predict.main([str(image), "--model", str(old), "--csv", str(out), "--device", "cpu"]) == 0
    table = pd.read_csv(out)
    assert table["in_domain"].isna().all() and table["domain_score"].isna().all()
    assert "domain check: missing" in capsys.readouterr().err


def test_predict_csv_has_the_domain_columns(trained, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):  # another dataset's images (tests/conftest.py's noise textures)
        Image.fromarray(textured(rng, 32, i == 1)).save(folder / f"other{i}.png")
    big = np.random.default_rng(3).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    Image.fromarray(big).save(folder / "large.png")
    source = trained["source"] / "train" / "REAL"
    out = tmp_path / "out.csv"
    code = predict.main([str(source), str(folder), "--model", str(trained["checkpoint"]),
                         "--csv", str(out), "--device", "cpu"])
    assert code == 0
    table = pd.read_csv(out)
    assert list(table.columns) == predict.COLUMNS
    assert table["domain_score"].notna().all()
    named = dict(zip(table["file"].map(lambda f: f.rsplit("/", 1)[-1]), table["in_domain"]))
    assert not any(named[f"other{i}.png"] for i in range(3)) and not named["large.png"]
    assert table.loc[table["file"].str.contains("/train/REAL/"), "in_domain"].astype(bool).mean() >= 0.8
    err = capsys.readouterr().err
    assert "domain check: " in err and "outside what this detector was trained on" in err


def test_notebook_table_describe_and_plot(trained):
    import io

    from PIL import Image

    from helpers.evaluation import domain as domain_eval
    from helpers.evaluation.cross_dataset import Source

    def source(name, files):
        return Source(name, [str(f) for f in files], np.array([int("fake" in f.name) for f in files]),
                      [f.read_bytes() for f in files])

    own = source("cifake test", sorted((trained["source"] / "test").rglob("*.png")))
    rng = np.random.default_rng(2)
    blobs = []
    for i in range(6):
        buffer = io.BytesIO()
        Image.fromarray(textured(rng, 32, i % 2 == 1)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    other = Source("noise test", [f"n{i}.png" for i in range(6)], np.arange(6) % 2, blobs)
    detector = Detector.load(trained["checkpoint"])
    detector.title = "cifake/fast"
    table = domain_eval.table([detector], [own, other], n_bootstrap=50)
    assert list(table["source"]) == ["cifake test", "noise test"] and table["own_test"].tolist() == [True, False]
    row = table.set_index("source").loc["noise test"]
    assert row.flagged == 1.0 and row.auroc > 0.9 and np.isnan(row.accuracy_in_domain)
    assert np.isnan(table.set_index("source").loc["cifake test", "auroc"])
    text = domain_eval.describe(table)
    assert "**cifake/fast**" in text and "noise test 100% flagged outside" in text
    fig = domain_eval.plot(table)
    assert len(fig.axes) == 2
