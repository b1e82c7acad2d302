"""A file's cost follows what it holds, with a ceiling: thin strips, JPEGs of many scans, huge
files that are not images and special files are refused from their header (or their stat)
with the reason, and threads decoding at once share one memory budget."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from helpers.core import image_cost, images
from helpers.core.image_bytes import jpeg_scans
from helpers.core.images import BadImageError, decode, decode_file
from tests.conftest import ROOT


def strip(width: int, height: int = 1) -> bytes:
    """A web spacer/gradient strip as the bad-inputs example saves it (a few hundred bytes)."""
    row = (np.arange(width) % 256).astype(np.uint8)[None, :].repeat(height, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([row, row[:, ::-1], np.full_like(row, 128)]), "RGB").save(
        buffer, "PNG", optimize=True)
    return buffer.getvalue()


def resize_then_crop(img: Image.Image, size: int) -> Image.Image:
    """The rule as it always was: shorter side to ``size``, then the centre square."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))


@pytest.mark.parametrize("width", [2_000, 300_000, 1_000_000])
def test_a_thin_strip_is_refused_from_its_header_with_the_reason(width):
    data = strip(width)
    assert len(data) < 4_000
    with pytest.raises(BadImageError, match=rf"s\.png: too thin to classify \({width}x1: its long "
                                            r"side is over 50 times the short one"):
        decode(data, 240, "s.png")
    with pytest.raises(BadImageError, match=r"too thin to classify \(1x"):
        decode(strip(1, height=width), 32)  # standing up: the same rule


def test_images_within_the_aspect_limit_keep_the_rule_exactly():
    rng = np.random.default_rng(3)
    for w, h, size in ((50 * 8, 8, 32), (129, 253, 240), (462, 234, 32), (40, 2000, 64)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert np.array_equal(np.asarray(images.fit_square(img, size)),
                              np.asarray(resize_then_crop(img, size))), (w, h, size)
    assert decode(strip(50 * 4, height=4), 32)[0].shape == (32, 32, 3)  # 50:1 is accepted


def test_beyond_the_limit_fit_square_crops_first():
    """A caller's own far-too-wide array: the centre square is cut from the source first."""
    wide = Image.frombytes("RGB", (300_000, 1), bytes(900_000))
    started = time.perf_counter()
    out = images.fit_square(wide, 240)
    assert out.size == (240, 240) and time.perf_counter() - started < 1.0


_PEAK = """
import resource, sys
from PIL import Image
from helpers.core import images
kind, path = sys.argv[1], sys.argv[2]
if kind == "decode":
    try:
        images.decode_file(path, 240)
    except images.BadImageError:
        pass
else:  # the resize itself, on the decoded strip
    with Image.open(path) as img:
        images.fit_square(img.convert("RGB"), 240)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(kind: str, path) -> int:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_PEAK), kind, str(path)],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_the_peak_memory_of_a_strip_stays_near_a_small_images(tmp_path):
    """Before: a 1x300,000 strip grew the process by 1.5 GB (its short side scaled up to the
    model's size before the crop). Now decoding or fitting it costs what a small image costs.
    Peak RSS of fresh processes; the margin (64 MB) is generous: the old cost was 20x that."""
    (tmp_path / "strip.png").write_bytes(strip(300_000))
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    small.save(tmp_path / "small.png")
    baseline = _peak_kib("decode", tmp_path / "small.png")
    for kind in ("decode", "fit"):
        assert _peak_kib(kind, tmp_path / "strip.png") < baseline + 64 * 1024, kind


def many_scans(scans_added: int) -> bytes:
    """A progressive JPEG with its last scan repeated: a small file that asks the decoder for
    one more pass over every pixel per copy (a 'scan bomb')."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=80)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * (scans_added + 1) + data[-2:]


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding():
    ordinary = many_scans(0)
    assert 2 <= jpeg_scans(ordinary) <= 12 and decode(ordinary, 32)[0].shape == (32, 32, 3)
    bomb = many_scans(image_cost.MAX_JPEG_SCANS)
    assert jpeg_scans(bomb) > image_cost.MAX_JPEG_SCANS and len(bomb) < 200_000
    with pytest.raises(BadImageError, match=r"b\.jpg: too costly to decode safely \(a JPEG of "
                                            r"1\d\d scans, each one more pass over every pixel"):
        decode(bomb, 32, "b.jpg")


def test_threads_decoding_at_once_share_one_memory_budget():
    budget = image_cost.DecodeBudget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def work(amount):
        with budget.hold(amount):
            with lock:
                held[0] += min(amount, 100)
                peak[0] = max(peak[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= min(amount, 100)

    threads = [threading.Thread(target=work, args=(a,)) for a in (60, 60, 30, 500, 10, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] <= 100 and budget.held == 0  # a 500 asks for all of it: it ran alone
    assert image_cost.decode_cost(1000, 1000, "RGB") < image_cost.decode_cost(1000, 1000, "F")


def test_empty_special_and_huge_non_image_files_are_reasons(tmp_path, monkeypatch):
    (tmp_path / "empty.jpg").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "movie.jpg").write_bytes(os.urandom(3 << 20))
    (tmp_path / "folder.jpg").mkdir()
    monkeypatch.setattr(images, "SNIFF_BYTES", 1 << 20)
    reasons = {}
    for name in ("empty.jpg", "pipe.png", "movie.jpg", "folder.jpg"):
        with pytest.raises(BadImageError) as err:
            decode_file(tmp_path / name, 32)
        reasons[name] = str(err.value).split(": ", 1)[1]
    assert reasons == {"empty.jpg": "empty file (0 bytes)",
                       "pipe.png": "not a regular file (a FIFO)",
                       "movie.jpg": "not an image file (Pillow cannot identify it)",
                       "folder.jpg": "not a regular file (a folder)"}


def test_decode_file_holds_its_bytes_and_pixels_under_the_budget_once(tmp_path, monkeypatch):
    holds = []

    class Recording(image_cost.DecodeBudget):
        def hold(self, amount):
            holds.append(amount)
            return super().hold(amount)

    monkeypatch.setattr(images, "DECODE_BUDGET", Recording(1 << 30))
    path = tmp_path / "p.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path)
    decode_file(path, 32)
    assert holds == [path.stat().st_size + image_cost.decode_cost(64, 48, "RGB")]
    decode(path.read_bytes(), 32)  # bytes already in memory: their pixels only
    assert holds[1:] == [image_cost.decode_cost(64, 48, "RGB")]
