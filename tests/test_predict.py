"""predict: any image file or folder in, P(AI-generated) out; bad files listed, exit codes."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.core import images as image_rule
from helpers.core.detector import Detector, best_path
from helpers.core.images import decode_file
from helpers.data.datasets import get_spec
from helpers.tools import predict
from tests.conftest import point_paths_at, train_tiny_detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny `fast` detector trained by helpers.training on a tiny CIFAKE-layout set, in a tmp tree."""
    return train_tiny_detector(tmp_path_factory.mktemp("predict"), "cifake")


@pytest.fixture
def results_tree(trained, monkeypatch):
    """helpers.core.paths pointed at the tmp tree holding the trained detector."""
    return point_paths_at(monkeypatch, trained)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A real JPEG photo, a PNG with alpha, a grayscale image, a corrupt file and a folder."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:200]
    photo = np.stack([(np.sin(xx / 9) * 80 + 128), (np.cos(yy / 7) * 80 + 128), xx % 256], -1)
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(folder / "photo.jpg", quality=88)
    rgba = np.dstack([photo[:64, :64], np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(photo[:, :, 0], "L").save(folder / "gray.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(50))
    sub = folder / "album" / "nested"
    sub.mkdir(parents=True)
    Image.fromarray(photo[10:42, 10:42]).save(sub / "small.webp")
    Image.fromarray(photo).save(folder / "album" / "big.bmp")
    (folder / "album" / "notes.txt").write_text("not an image, and not named on the command line")
    return folder


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["error"].isna()]


@pytest.mark.slow
def test_predict_files_folder_and_corrupt(results_tree, images, tmp_path, capsys):
    out = tmp_path / "out.csv"
    args = [str(images / n) for n in ("photo.jpg", "alpha.png", "gray.png", "corrupt.jpg")]
    code = predict.main([*args, str(images / "album"), "--model", str(results_tree["checkpoint"]),
                         "--csv", str(out), "--batch-size", "2", "--device", "cpu"])
    assert code == predict.EXIT_SOME_FAILED
    table = pd.read_csv(out)
    assert list(table.columns) == predict.COLUMNS
    names = [p.rsplit("/", 1)[-1] for p in table["file"]]
    assert names == ["photo.jpg", "alpha.png", "gray.png", "corrupt.jpg", "big.bmp", "small.webp"]
    good = _ok(table)
    assert len(good) == 5 and good["p_fake"].between(0, 1).all()
    threshold = Detector.load(results_tree["checkpoint"]).threshold  # chosen on validation
    assert (good["label"] == np.where(good["p_fake"] >= threshold, "FAKE", "REAL")).all()
    bad = table[table["error"].notna()]
    assert bad["file"].str.endswith("corrupt.jpg").all() and len(bad) == 1
    assert bad["p_fake"].isna().all()
    printed = capsys.readouterr().out
    assert "1 of 6 could not be classified" in printed and "corrupt.jpg: corrupt" in printed
    assert "photo.jpg" in printed and "notes.txt" not in printed


@pytest.mark.slow
def test_predict_default_model_and_exit_codes(results_tree, images, tmp_path, capsys):
    good = [str(images / "photo.jpg"), str(images / "gray.png")]
    # no --model: the best checkpoint of --dataset
    assert predict.main([*good, "--dataset", "cifake", "--device", "cpu"]) == predict.EXIT_OK
    assert "photo.jpg" in capsys.readouterr().out
    # a missing path and an empty folder are listed, not fatal
    (tmp_path / "empty").mkdir()
    code = predict.main([*good, str(tmp_path / "nope.png"), str(tmp_path / "empty"),
                         "--dataset", "cifake", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == predict.EXIT_SOME_FAILED
    assert "nope.png: no such file or folder" in printed and "holds no image files" in printed
    # no model for the dataset, a missing checkpoint, a foreign checkpoint, bad usage: exit 2
    assert predict.main([*good, "--dataset", "demo"]) == predict.EXIT_USAGE
    assert predict.main([*good, "--model", str(tmp_path / "missing.pt")]) == predict.EXIT_USAGE
    torch.save({"G": {}}, tmp_path / "gan.pt")
    assert predict.main([*good, "--model", str(tmp_path / "gan.pt")]) == predict.EXIT_USAGE
    assert "no usable detector" in capsys.readouterr().err
    assert predict.main([]) == predict.EXIT_USAGE
    assert predict.main([*good, "--batch-size", "0"]) == predict.EXIT_USAGE


@pytest.mark.slow
def test_same_preprocessing_as_training(results_tree):
    """A dataset file through predict gets exactly the probability of its cached pixels."""
    detector = Detector.load(results_tree["checkpoint"])
    cache = results_tree["cache"]
    index = cache.indices("test")[:4]
    files = [results_tree["source"] / f for f in cache.files[index]]
    table = predict.classify_files(files, detector)
    expected = detector.predict_proba(cache.images[index])
    np.testing.assert_allclose(table["p_fake"].to_numpy(), expected, rtol=1e-6)
    # uploaded bytes take the same path as files
    uploads = [(f.name, f.read_bytes()) for f in files] + [("junk.png", b"nope")]
    from_bytes = predict.classify_images(uploads, detector)
    np.testing.assert_allclose(from_bytes["p_fake"].to_numpy()[:4], expected, rtol=1e-6)
    assert from_bytes["file"].tolist()[-1] == "junk.png"
    assert from_bytes["error"].tolist()[-1].startswith("not an image file")


@pytest.mark.slow
def test_classify_files_decodes_once_per_file(results_tree, images, monkeypatch):
    detector = Detector.load(results_tree["checkpoint"])
    calls = []
    original = image_rule.decode_file
    monkeypatch.setattr(image_rule, "decode_file", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    files = [images / "photo.jpg", images / "gray.png", images / "alpha.png"]
    table = predict.classify_files(files, detector, batch_size=2, workers=2)
    assert sorted(map(str, calls)) == sorted(map(str, files))
    assert table["error"].isna().all()
    # the alpha PNG is composited on white, as the training data rule says
    pixels = decode_file(images / "alpha.png", 32)[0]
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_expand_paths(images, tmp_path):
    files, problems = predict.expand_paths([images / "album", images / "photo.jpg",
                                            tmp_path / "missing.gif"])
    assert [f.name for f in files] == ["big.bmp", "small.webp", "photo.jpg"]
    assert problems == [(str(tmp_path / "missing.gif"), "no such file or folder")]


def test_help_states_the_preprocessing_rule(capsys):
    assert predict.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "helpers/core/images.py" in text and "1024x768" in text and "centre" in text
    assert "Exit code" in text


def test_jpeg_harmonisation_follows_the_dataset():
    def trained_on(dataset, **config):
        return SimpleNamespace(dataset=dataset, config=config)

    assert predict.preprocessing_jpeg_quality(trained_on("sneakers")) == get_spec("sneakers").harmonise_jpeg
    assert predict.preprocessing_jpeg_quality(trained_on("demo")) is None
    assert predict.preprocessing_jpeg_quality(trained_on("x", harmonise_jpeg=80)) == 80


def test_grayscale_and_alpha_decode_like_rgb(images):
    gray = decode_file(images / "gray.png", 32)[0]
    assert gray.shape == (32, 32, 3) and (gray[..., 0] == gray[..., 2]).all()
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(buffer, format="PNG")
    from helpers.core.images import decode

    assert decode(buffer.getvalue(), 32)[0].min() == 255  # transparent -> white background


@pytest.mark.slow
def test_chunks_give_the_same_table(results_tree, images, monkeypatch):
    detector = Detector.load(results_tree["checkpoint"])
    files = [images / n for n in ("photo.jpg", "corrupt.jpg", "gray.png", "alpha.png")]
    whole = predict.classify_files(files, detector)
    monkeypatch.setattr(predict, "CHUNK_IMAGES", 1)
    chunked = predict.classify_files(files, detector, batch_size=1)
    pd.testing.assert_frame_equal(whole, chunked, rtol=1e-6)
    assert chunked["error"].notna().tolist() == [False, True, False, False]


def test_best_checkpoint_skips_a_corrupt_file_with_a_warning(results_tree):
    good = results_tree["checkpoint"]
    broken = good.with_name("zz_truncated.pt")
    broken.write_bytes(good.read_bytes()[:200])
    try:
        with pytest.warns(UserWarning, match=r"zz_truncated\.pt: skipped, corrupt or truncated"):
            assert best_path("cifake") == good
    finally:
        broken.unlink()


@pytest.mark.filterwarnings("ignore:Metadata Warning:UserWarning")  # Pillow on the bad EXIF
def test_a_folder_of_good_files_and_every_bad_kind(results_tree, images, tmp_path, capsys):
    """Files from the wild: the good ones (broken metadata and odd names included) are
    classified, every other is listed with its reason, and the run ends with exit code 1."""
    import os
    import struct
    import zlib

    from tests.test_images import encode, exif_block, jpeg_with_app1, picture, png_chunk, png_with

    folder = tmp_path / "wild"
    folder.mkdir()
    photo = (images / "photo.jpg").read_bytes()
    (folder / "good.jpg").write_bytes(photo)
    (folder / "deep16.png").write_bytes(encode(Image.fromarray(
        np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (30, 1))), "PNG"))
    wrong_type = bytes.fromhex(  # NumberOfInks as ASCII beside Orientation 6: struct.error before
        "457869660000" "4d4d002a00000008" "0003" "014e" "0002" "0000000b" "00000032"
        "0112" "0003" "00000001" "00060000" "011a" "0005" "00000001" "0000003e"
        "00000000" "50686f6e654d6f64656c00" "000000004800000001")
    (folder / "bad_exif.jpg").write_bytes(jpeg_with_app1(encode(picture(), "JPEG"), wrong_type))
    (folder / "rotated.jpg").write_bytes(encode(picture(), "JPEG", exif=exif_block(6)))
    (folder / "broken_icc.png").write_bytes(png_with(encode(picture(), "PNG"),
                                                     png_chunk(b"iCCP", b"icc\0\0xyz", crc=0)))
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as file:
        file.write(photo)  # a name that is not UTF-8
    (folder / "truncated.jpg").write_bytes(photo[: len(photo) // 3])
    (folder / "notes.png").write_text("a text file with an image's name")
    header = struct.pack(">IIBBBBB", 15_000, 12_100, 8, 2, 0, 0, 0)
    (folder / "wide.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                                      + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                                      + png_chunk(b"IEND", b""))
    os.mkfifo(tmp_path / "pipe.jpg")
    out = tmp_path / "table.csv"
    with pytest.warns(Image.DecompressionBombWarning):
        code = predict.main([str(folder), str(tmp_path / "pipe.jpg"), "--csv", str(out),
                             "--model", str(results_tree["checkpoint"]), "--device", "cpu"])
    assert code == predict.EXIT_SOME_FAILED
    table = pd.read_csv(out, encoding="utf-8")  # names escaped: the CSV is plain UTF-8
    table.index = table["file"].str.rsplit("/", n=1).str[-1]
    good = ["good.jpg", "deep16.png", "bad_exif.jpg", "rotated.jpg", "broken_icc.png", "caf\\xe9.jpg"]
    assert table.loc[good, "error"].isna().all() and table.loc[good, "p_fake"].between(0, 1).all()
    assert table.loc["broken_icc.png", "note"].startswith("malformed metadata, decoded without it")
    assert table.loc[["good.jpg", "bad_exif.jpg"], "note"].isna().all()
    reasons = table["error"].dropna().to_dict()
    assert reasons["truncated.jpg"].startswith("corrupt or truncated image")
    assert reasons["notes.png"].startswith("not an image file")
    assert reasons["wide.png"].startswith("too large to decode safely (15000x12100")
    assert reasons["pipe.jpg"] == "not a regular file" and len(reasons) == 4
    printed = capsys.readouterr().out
    assert "4 of 10 could not be classified" in printed and "caf\\xe9.jpg" in printed
    assert "note: malformed metadata" in printed
