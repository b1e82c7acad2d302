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
from helpers.tools import predict, verdicts
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
    assert names == ["photo.jpg", "alpha.png", "gray.png", "corrupt.jpg", "big.bmp", "small.webp",
                     "notes.txt"]  # every entry of the folder accounted for
    good = _ok(table)
    assert len(good) == 5 and good["p_fake"].between(0, 1).all()
    threshold = Detector.load(results_tree["checkpoint"]).threshold  # chosen on validation
    assert (good["label"] == np.where(good["p_fake"] >= threshold, "FAKE", "REAL")).all()
    bad = table[table["error"].notna()].set_index("file")["error"]
    assert [f.rsplit("/", 1)[-1] for f in bad.index] == ["corrupt.jpg", "notes.txt"]
    assert table.loc[table["error"].notna(), "p_fake"].isna().all()
    printed = capsys.readouterr().out
    assert "2 of 7 could not be classified" in printed and "corrupt.jpg: corrupt" in printed
    assert "notes.txt: not an image file (suffix .txt; Pillow cannot identify it)" in printed


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
    assert "nope.png: no such file or folder" in printed and "empty: folder holds no files" in printed
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
    assert problems == [(str(images / "album" / "notes.txt"),
                         "not an image file (suffix .txt; Pillow cannot identify it)"),
                        (str(tmp_path / "missing.gif"), "no such file or folder")]


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
    assert reasons["pipe.jpg"] == "not a regular file (a FIFO)" and len(reasons) == 4
    printed = capsys.readouterr().out
    assert "4 of 10 could not be classified" in printed and "caf\\xe9.jpg" in printed
    assert "note: malformed metadata" in printed


def _wild_folder(root, photo: bytes):
    """Files from the wild, second round: good files in every suffix Pillow decodes, a 32-bit
    TIFF, a linked subfolder; and every kind of entry that is not an image."""
    import os

    from tests.test_image_cost import many_scans, strip
    from tests.test_images import encode, picture

    folder, outside = root / "wild", root / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    (folder / "good.jpg").write_bytes(photo)
    for suffix, fmt in ((".jfif", "JPEG"), (".jpe", "JPEG"), (".avif", "AVIF"), (".jp2", "JPEG2000")):
        (folder / f"phone{suffix}").write_bytes(encode(picture(), fmt))
    (folder / "int32.tif").write_bytes(encode(Image.fromarray(
        np.full((32, 32), 1 << 30, np.int32), "I"), "TIFF"))
    (outside / "linked.png").write_bytes(encode(picture(), "PNG"))
    os.symlink(outside, folder / "album")  # a linked subfolder: followed
    os.symlink(".", folder / "loop")  # points back to the folder itself
    (folder / "strip.png").write_bytes(strip(300_000))
    (folder / "scans.jpg").write_bytes(many_scans(150))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "folder.jpg").mkdir()
    os.symlink("gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.slow
def test_a_folder_of_every_second_round_kind(results_tree, images, tmp_path, capsys):
    folder = _wild_folder(tmp_path, (images / "photo.jpg").read_bytes())
    out = tmp_path / "table.csv"
    code = predict.main([str(folder), "--csv", str(out), "--model", str(results_tree["checkpoint"]),
                         "--device", "cpu"])
    assert code == predict.EXIT_SOME_FAILED
    table = pd.read_csv(out).set_index("file")
    table.index = [f[len(str(folder)) + 1:] for f in table.index]
    good = ["good.jpg", "phone.jfif", "phone.jpe", "phone.avif", "phone.jp2", "int32.tif",
            "album/linked.png"]
    assert table.loc[good, "error"].isna().all() and table.loc[good, "p_fake"].between(0, 1).all()
    assert table.loc["int32.tif", "note"].startswith("32-bit signed integer pixels scaled")
    reasons = table["error"].dropna().to_dict()
    assert reasons.pop("strip.png").startswith("too thin to classify (300000x1")
    assert reasons.pop("scans.jpg").startswith("too costly to decode safely (a JPEG of 1")
    assert reasons.pop("loop").startswith("symbolic link loop: it points back to the top folder")
    assert reasons == {"empty.jpg": "empty file (0 bytes)",
                       "folder.jpg": "a folder named like an image file, holding no files",
                       "dangling.png": "broken symbolic link (its target gone.png does not exist)",
                       "pipe.jpg": "not a regular file (a FIFO)",
                       "notes.txt": "not an image file (suffix .txt; Pillow cannot identify it)"}
    assert "8 of 15 could not be classified" in capsys.readouterr().out


_PREDICT_PEAK = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-m", "helpers.tools.predict", *sys.argv[1:], "--device", "cpu"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
def test_predict_on_the_wild_folder_stays_within_a_small_images_memory(results_tree, images, tmp_path):
    """The stated bound: a folder of every kind costs what one small photo costs, plus 150 MB
    (the strip alone cost 1.5 GB more before; peak RSS of fresh processes)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    folder = _wild_folder(tmp_path, (images / "photo.jpg").read_bytes())
    (folder / "pipe.jpg").unlink()  # nothing would write to it

    def peak(*paths) -> int:
        out = subprocess.run([sys.executable, "-c", _PREDICT_PEAK, *map(str, paths), "--model",
                              str(results_tree["checkpoint"])], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        return int(out.stdout.split()[-1])

    assert peak(folder) < peak(images / "photo.jpg") + 150 * 1024


def test_a_score_that_is_not_finite_is_an_error_never_a_verdict():
    table = verdicts.verdict_table(["a.png", "b.png", "c.png", "d.png"], np.array([0.7, np.nan, np.inf, np.nan]),
                           [None, None, None, "corrupt"], 0.5)
    assert table["label"].tolist()[:1] == ["FAKE"] and table["label"].iloc[1:].isna().all()
    assert table["error"].iloc[1].startswith("no verdict: the detector returned nan instead of a "
                                             "probability (a broken model")
    assert table["error"].iloc[2].startswith("no verdict: the detector returned inf")
    assert table["error"].iloc[3] == "corrupt" and table["p_fake"].iloc[1:].isna().all()


def nan_checkpoint(checkpoint, out):
    """What an overflowing float16 run leaves: one BatchNorm running variance set to NaN (the
    bad-inputs example 24)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key].clone()
    ckpt["state_dict"][key][0] = float("nan")
    torch.save(ckpt, out)
    return out


@pytest.mark.slow
def test_a_nan_detector_gives_no_verdict_and_exit_1(results_tree, images, tmp_path, capsys):
    broken = nan_checkpoint(results_tree["checkpoint"], tmp_path / "nan.pt")
    out = tmp_path / "table.csv"
    code = predict.main([str(images / "photo.jpg"), str(images / "gray.png"), "--model", str(broken),
                         "--csv", str(out), "--device", "cpu"])
    assert code == predict.EXIT_SOME_FAILED
    table = pd.read_csv(out)
    assert table["label"].isna().all() and table["p_fake"].isna().all()
    assert table["error"].str.startswith("no verdict: the detector returned nan").all()
    printed = capsys.readouterr().out
    assert "REAL" not in printed and "2 of 2 could not be classified" in printed
