"""The Streamlit app, headless: uploads give a probability, a label and a Grad-CAM overlay; bad
uploads an error while the app keeps running; no checkpoint a message naming the `make` target;
and the real server answers on localhost."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.core import paths
from helpers.core.detector import Detector
from helpers.tools import predict
from tests.conftest import ROOT, point_paths_at, train_tiny_detector

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(ROOT / "helpers" / "tools" / "app.py")
TIMEOUT = 120  # seconds per AppTest run: the first one imports torch and loads the model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny `fast` detector for the DEMO dataset (trained on a tiny source) in a tmp tree."""
    return train_tiny_detector(tmp_path_factory.mktemp("app"), "demo")


@pytest.fixture
def results_tree(trained, monkeypatch):
    """helpers.core.paths (read in-process by the app under AppTest) pointed at the tmp tree."""
    monkeypatch.setattr(sys, "argv", ["app.py", "--dataset", "demo"])
    return point_paths_at(monkeypatch, trained)


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def uploads() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    photo = np.stack([np.sin(xx / 9) * 80 + 128, np.cos(yy / 7) * 80 + 128, xx % 256], -1)
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    jpeg = encoded(photo, "JPEG", quality=90)
    return {"photo.jpg": jpeg, "small.png": encoded(photo[:40, :40], "PNG"),
            "photo.webp": encoded(photo, "WEBP"), "truncated.jpg": jpeg[: len(jpeg) // 3],
            "notes.png": b"this is a text file with an image name\n" * 5, "huge.png": bomb_png()}


def bomb_png(side: int = 30_000) -> bytes:
    """A tiny PNG file that claims side x side pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def mime(name: str) -> str:
    return {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[name.rsplit(".", 1)[1]]


def upload(at, files: list[tuple[str, bytes]]):
    at.file_uploader[0].set_value([(name, content, mime(name)) for name, content in files])
    return at.run(timeout=TIMEOUT)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_upload_shows_probability_label_and_overlay(results_tree, uploads):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert "Upload one or more images" in texts(at.info)
    sidebar = texts(at.sidebar.markdown)
    assert "`fast`" in sidebar and "Validation accuracy" in sidebar
    assert "DEMO" in texts(at.sidebar.warning)

    names = ["photo.jpg", "small.png", "photo.webp"]
    upload(at, [(n, uploads[n]) for n in names])
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)

    # The numbers are those of predict.classify_images on the same bytes.
    detector = Detector.load(results_tree["checkpoint"])
    expected = predict.classify_images([(n, uploads[n]) for n in names], detector)
    metrics = [m for m in at.metric if m.label == "P(AI-generated)"]
    assert [m.value for m in metrics] == [f"{p:.1%}" for p in expected["p_fake"]]
    verdicts = [m.value for m in at.markdown if str(m.value).startswith("**Verdict:")]
    assert len(verdicts) == 3
    # the verdict is taken at the detector's own threshold, chosen on validation, and says so
    assert texts(at.caption).count(f"FAKE when P >= {detector.threshold:.1%}") == 3
    for verdict, label in zip(verdicts, expected["label"], strict=True):
        assert f"({label})" in verdict
    # per image: the upload, the model's view and the Grad-CAM overlay
    captions = [c for image in at.image for c in image.captions]
    assert len(captions) == 3 * len(names), captions
    assert sum(c == "uploaded" for c in captions) == len(names)
    assert sum(c.startswith("what the model sees (32x32)") for c in captions) == len(names)
    assert sum(c.startswith("Grad-CAM: evidence for") for c in captions) == len(names)


def test_bad_uploads_get_a_message_and_the_app_keeps_running(results_tree, uploads):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    upload(at, [("notes.png", uploads["notes.png"]), ("truncated.jpg", uploads["truncated.jpg"]),
                ("huge.png", uploads["huge.png"]), ("photo.jpg", uploads["photo.jpg"])])
    assert not at.exception, at.exception
    errors = texts(at.error)
    assert "notes.png: not an image file" in errors
    assert "truncated.jpg: corrupt or truncated" in errors
    assert "huge.png: too large to decode safely" in errors and "Scale it down" in errors
    assert "Upload a JPEG, PNG or WebP image" in errors
    assert len([m for m in at.metric if m.label == "P(AI-generated)"]) == 1  # the good one

    oversized = b"\0" * (26 * 2**20)
    upload(at, [("big.png", oversized)])
    assert not at.exception, at.exception
    assert "big.png: 26.0 MB is over this app's limit of 25 MB" in texts(at.error)

    upload(at, [("small.png", uploads["small.png"])])  # still answering
    assert not at.exception and not at.error
    assert len([m for m in at.metric if m.label == "P(AI-generated)"]) == 1


def test_no_checkpoint_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["app.py", "--dataset", "sneakers"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    message = texts(at.error)
    assert "No trained detector for dataset **sneakers**" in message
    assert "make train DATASET=sneakers DATA_SOURCE=" in message
    assert not at.file_uploader  # nothing to upload to


def test_the_other_method_and_checkpoint_selects(results_tree, uploads):
    # another .pt file (the GAN's) beside the detector is not offered as a detector
    foreign = results_tree["checkpoint"].with_name("gan.pt")
    torch.save({"format": "aidetect-gan", "state": {}}, foreign)
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    finally:
        foreign.unlink()
    assert at.sidebar.selectbox(key="dataset").options == ["demo"]
    assert at.sidebar.selectbox(key="checkpoint").options == ["default: fast (specialist)", "fast"]
    at.sidebar.selectbox(key="method").set_value("EigenCAM").run(timeout=TIMEOUT)
    upload(at, [("photo.jpg", uploads["photo.jpg"])])
    assert not at.exception and not at.error
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("EigenCAM") for c in captions), captions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_server(tree: dict, home: Path) -> Iterator[tuple[str, object, Path]]:
    """`make app`'s command on a free port over a :func:`train_tiny_detector` tree; yields
    (its address, the health check's answer or None after 90 s, its log), stops it after."""
    import requests

    port = free_port()
    env = {**os.environ, "AIDETECT_RESULTS": str(tree["root"] / "results"),
           "AIDETECT_DATA": str(tree["root"] / "data"), "HOME": str(home)}
    cmd = [sys.executable, "-m", "streamlit", "run", APP, "--server.address", "localhost",
           "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--", "--dataset", "demo"]
    log = home / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, health = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = requests.get(f"http://localhost:{port}/_stcore/health", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert server.poll() is None, log.read_text(errors="replace")
        yield f"http://localhost:{port}/", health, log
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_server_answers_on_localhost(trained, tmp_path):
    """`make app`'s command on a free port: the page and Streamlit's health check answer."""
    import requests

    with app_server(trained, tmp_path) as (address, health, log):
        assert health is not None, f"no answer in 90 s:\n{log.read_text(errors='replace')}"
        assert health.status_code == 200 and health.text == "ok"
        page = requests.get(address, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()


@pytest.mark.filterwarnings("ignore:Metadata Warning:UserWarning")  # Pillow on the bad EXIF
def test_files_with_malformed_metadata_and_odd_names_are_classified(results_tree, uploads):
    """The bad-inputs example (an EXIF tag of the wrong type) crashed the whole page; a PNG
    with a broken metadata chunk was refused. Both get a verdict, the PNG a caveat, and a
    name holding markdown characters is shown as it is."""
    from tests.test_images import encode, jpeg_with_app1, picture, png_chunk, png_with

    wrong_type = bytes.fromhex(
        "457869660000" "4d4d002a00000008" "0003" "014e" "0002" "0000000b" "00000032"
        "0112" "0003" "00000001" "00060000" "011a" "0005" "00000001" "0000003e"
        "00000000" "50686f6e654d6f64656c00" "000000004800000001")
    files = [("bad_exif.jpg", jpeg_with_app1(encode(picture(), "JPEG"), wrong_type)),
             ("broken_icc.png", png_with(encode(picture(), "PNG"), png_chunk(b"iCCP", b"x\0\0", 0))),
             ("my *best* [shot] $1.png", uploads["small.png"])]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    upload(at, files)
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    assert len([m for m in at.metric if m.label == "P(AI-generated)"]) == 3
    assert "malformed metadata, decoded without it" in texts(at.warning)
    assert r"my \*best\* \[shot\] \$1.png" in texts(at.subheader)


def test_a_nan_detector_says_it_is_broken_and_a_thin_strip_is_refused(results_tree, uploads):
    """No verdict from a broken model (one BatchNorm variance NaN, what an overflowing float16
    run leaves), and the upload limit follows predict's rules (a 1x300,000 strip of 1 kB)."""
    from tests.test_image_cost import strip
    from tests.test_predict import nan_checkpoint

    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    upload(at, [("strip.png", strip(300_000)), ("photo.jpg", uploads["photo.jpg"])])
    assert not at.exception, at.exception
    errors = texts(at.error)
    assert "strip.png: too thin to classify (300000x1" in errors and "Crop or re-save it" in errors
    assert len([m for m in at.metric if m.label == "P(AI-generated)"]) == 1

    checkpoint = results_tree["checkpoint"]
    saved = checkpoint.read_bytes()
    try:
        nan_checkpoint(checkpoint, checkpoint)
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        upload(at, [("photo.jpg", uploads["photo.jpg"])])
    finally:
        checkpoint.write_bytes(saved)
    assert not at.exception, at.exception
    errors = texts(at.error)
    assert "This detector is broken: it gives NaN instead of a probability" in errors
    assert "photo.jpg: no verdict: the detector returned nan" in errors
    assert "Choose another checkpoint" in errors
    assert not [m for m in at.metric if m.label == "P(AI-generated)"]
    assert not [m for m in at.markdown if str(m.value).startswith("**Verdict:")]
