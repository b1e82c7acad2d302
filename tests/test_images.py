"""The image rule from the wild: any decoder failure is one file's reason, malformed metadata is
left out (and said so), and one pixel rule per pixel format (16-bit, float, transparency, MPO)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from helpers.core import images
from helpers.core.images import BadImageError, decode

# Pillow warns about the corrupt EXIF and the oversized headers these tests build on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning",
                                        "ignore::PIL.Image.DecompressionBombWarning")


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def picture(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB picture whose every orientation differs (so a missed rotation shows)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xx * 4, yy * 5, (xx + 2 * yy) * 2], -1).astype(np.uint8))


def exif_block(orientation: int, camera: str = "Camera") -> bytes:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x011A] = orientation, camera, (72, 1)
    return exif.tobytes()


def png_chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_with(data: bytes, chunk: bytes) -> bytes:
    """``data`` (a PNG) with ``chunk`` inserted right after IHDR."""
    end_of_ihdr = 8 + 8 + 13 + 4
    return data[:end_of_ihdr] + chunk + data[end_of_ihdr:]


def jpeg_with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


# --------------------------------------------------------------------------- kind 1: no file stops a run

def test_an_exif_tag_of_the_wrong_type_keeps_the_file_and_its_orientation():
    """The bad-inputs example: NumberOfInks (a SHORT) stored as ASCII beside Orientation = 6.
    ImageOps.exif_transpose raised struct.error writing it back; the rotation is still right."""
    exif = bytes.fromhex(
        "457869660000" "4d4d002a00000008" "0003"
        "014e" "0002" "0000000b" "00000032"
        "0112" "0003" "00000001" "00060000"
        "011a" "0005" "00000001" "0000003e"
        "00000000" "50686f6e654d6f64656c00" "000000004800000001")
    jpeg = encode(picture(), "JPEG", quality=90)
    bad = jpeg_with_app1(jpeg, exif)
    # what stopped predict, the app and the data step
    with pytest.raises(struct.error), Image.open(io.BytesIO(bad)) as img:
        ImageOps.exif_transpose(img)
    array, info = decode(bad, 32)
    good, _ = decode(encode(picture(), "JPEG", quality=90, exif=exif_block(6)), 32)
    assert np.array_equal(array, good) and (info.width, info.height) == (64, 48)
    assert info.notes == ()  # the orientation, all the rule needs, was readable


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_as_pillow_applies_it(orientation):
    data = encode(picture(), "JPEG", quality=90, exif=exif_block(orientation))
    with Image.open(io.BytesIO(data)) as img:
        expected = images.fit_square(ImageOps.exif_transpose(img).convert("RGB"), 32)
    assert np.array_equal(decode(data, 32)[0], np.asarray(expected))


def test_unreadable_exif_is_left_out_with_a_note():
    jpeg = encode(picture(), "JPEG", quality=90)
    plain = decode(jpeg, 32)[0]
    garbage = jpeg_with_app1(jpeg, b"Exif\x00\x00" + b"XX\x00\x2a" + bytes(range(40)))
    array, info = decode(garbage, 32)
    assert np.array_equal(array, plain)
    assert len(info.notes) == 1 and "EXIF metadata unreadable" in info.notes[0]
    odd = decode(encode(picture(), "JPEG", quality=90, exif=exif_block(9)), 32)[1]
    assert odd.notes == ("EXIF orientation 9 is not 1-8: not applied",)


def test_a_png_whose_metadata_chunk_is_broken_decodes_without_it():
    png = encode(picture(), "PNG")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    body = b"icc\x00\x00" + zlib.compress(icc)
    broken = png_with(png, png_chunk(b"iCCP", body, crc=zlib.crc32(b"iCCP" + body) ^ 1))
    with pytest.raises(Exception):  # noqa: B017 - Pillow refuses the whole file
        Image.open(io.BytesIO(broken)).load()
    array, info = decode(broken, 32)
    assert np.array_equal(array, decode(png, 32)[0])
    assert len(info.notes) == 1 and info.notes[0].startswith("malformed metadata")


def test_damaged_pixel_data_is_not_mistaken_for_metadata():
    png = encode(picture(), "PNG")
    at = png.index(b"IDAT") + 20
    broken = png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1:]  # IDAT's CRC no longer matches
    with pytest.raises(BadImageError, match="corrupt or truncated|not an image"):
        decode(broken, 32, "broken.png")
    jpeg = encode(picture(), "JPEG")
    with pytest.raises(BadImageError, match=r"^cut\.jpg: corrupt or truncated image"):
        decode(jpeg[: len(jpeg) // 2], 32, "cut.jpg")


def test_a_mode_that_cannot_be_converted_is_the_files_reason(monkeypatch):
    def refuse(img, kind=None):
        raise ValueError(f"conversion from {img.mode} to RGB not supported")

    monkeypatch.setattr(images, "to_rgb", refuse)
    with pytest.raises(BadImageError, match=r"x\.png: unsupported pixel format RGB \(ValueError"):
        decode(encode(picture(), "PNG"), 32, "x.png")


def test_the_pixel_limit_is_enforced_from_the_header():
    """15,000 x 12,100 pixels: over MAX_PIXELS but under twice it, where Pillow only warns.
    The file is a few bytes: refused before anything is allocated or decoded."""
    header = struct.pack(">IIBBBBB", 15_000, 12_100, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    assert images.MAX_PIXELS < 15_000 * 12_100 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImageError, match=r"too large to decode safely \(15000x12100"):
        decode(data, 32, "wide.png")


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path, monkeypatch):
    data = encode(picture(), "PNG")
    (tmp_path / "big.png").write_bytes(data)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", len(data) - 1)
    for call in (lambda: decode(data, 32, "big.png"),
                 lambda: images.decode_file(tmp_path / "big.png", 32)):
        with pytest.raises(BadImageError, match="big.png: too large to decode safely"):
            call()


def test_special_and_unreadable_files_are_reasons_not_crashes(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block for ever
    with pytest.raises(BadImageError, match="pipe.jpg: not a regular file \\(a FIFO\\)"):
        images.decode_file(tmp_path / "pipe.jpg", 32)
    with pytest.raises(BadImageError, match="missing.jpg: cannot read file"):
        images.decode_file(tmp_path / "missing.jpg", 32)


def _fuzz_bases() -> dict[str, bytes]:
    """A JPEG, a PNG and a WebP, each with EXIF and an ICC profile (the PNG also a colour key)."""
    img = picture()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = exif_block(6)
    return {
        "jpeg": encode(img, "JPEG", quality=85, exif=exif, icc_profile=icc, comment=b"fuzz"),
        "png": encode(img, "PNG", exif=exif, icc_profile=icc, transparency=(0, 0, 0)),
        "webp": encode(img, "WEBP", quality=80, exif=exif, icc_profile=icc),
    }


_MARKS = {  # where the metadata and the scan data start in each format
    "jpeg": {"exif": b"Exif\x00\x00", "icc": b"ICC_PROFILE\x00", "data": b"\xff\xda"},
    "png": {"exif": b"eXIf", "icc": b"iCCP", "data": b"IDAT"},
    "webp": {"exif": b"EXIF", "icc": b"ICCP", "data": b"VP8 "},
}


def _regions(fmt: str, data: bytes) -> list[tuple[int, int]]:
    spans = [(0, 32)]  # the header
    for mark in _MARKS[fmt].values():
        start = data.index(mark)
        spans.append((start, min(len(data), start + 600)))
    return spans


def _mutate(data: bytes, spans: list[tuple[int, int]], rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    lo, hi = spans[rng.integers(len(spans))]
    at = int(rng.integers(lo, hi))
    kind = rng.integers(5)
    if kind == 0:  # flip a few bits
        for _ in range(rng.integers(1, 4)):
            out[int(rng.integers(lo, hi))] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # a byte set to a boundary value (lengths, counts, types)
        out[at] = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    elif kind == 2:  # truncated there
        del out[at:]
    elif kind == 3:  # random bytes inserted
        out[at:at] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    else:  # a run overwritten with random bytes
        n = int(rng.integers(2, 24))
        out[at:at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_fuzzed_files_decode_or_raise_the_one_bad_image_error(fmt):
    """Seeded byte-level mutations of headers, EXIF, ICC and scan data: every call returns a
    valid model input or raises BadImageError, never anything else."""
    base = _fuzz_bases()[fmt]
    spans = _regions(fmt, base)
    rng = np.random.default_rng(["jpeg", "png", "webp"].index(fmt))
    outcomes = {"ok": 0, "bad": 0}
    for i in range(300):
        data = _mutate(base, spans, rng)
        try:
            array, info = decode(data, 32, f"{fmt}-{i}")
        except BadImageError as err:
            assert str(err).startswith(f"{fmt}-{i}: "), err
            outcomes["bad"] += 1
            continue
        assert array.shape == (32, 32, 3) and array.dtype == np.uint8 and array.flags.c_contiguous
        assert isinstance(info.notes, tuple)
        outcomes["ok"] += 1
    assert outcomes["ok"] > 30 and outcomes["bad"] > 30, outcomes  # both paths were exercised


# --------------------------------------------------------------------------- kind 3: one pixel rule per format

def grey16(values: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    return encode(Image.fromarray(values.astype(np.uint16)), fmt, **options)


def test_16_bit_images_are_scaled_by_the_types_range_not_their_own_maximum():
    dark = [decode(grey16(np.full((32, 32), v)), 32)[0] for v in (255, 256)]
    assert dark[0].max() <= 1 and dark[1].max() <= 1  # both near-black, as they look
    ramp = decode(grey16(np.tile(np.linspace(0, 200, 32), (32, 1))), 32)[0]
    assert ramp.max() == 0
    full = decode(grey16(np.tile(np.array([0, 257, 32768, 65535]), (32, 8))), 32)[0]
    assert full[0, :4, 0].tolist() == [0, 1, 128, 255]


def test_16_bit_data_of_8_bit_values_decodes_as_the_8_bit_image():
    """v * 257 is v stretched to 16 bits: every 16-bit form gives the 8-bit picture back."""
    values = np.arange(256, dtype=np.uint16).reshape(16, 16).repeat(2, 0).repeat(2, 1)
    eight = decode(encode(Image.fromarray(values.astype(np.uint8), "L"), "PNG"), 32)[0]
    for fmt in ("PNG", "TIFF", "PPM"):  # I;16 (PNG, TIFF) and Pillow's I (16-bit PGM)
        assert np.array_equal(decode(grey16(values * 257, fmt), 32)[0], eight), fmt


def test_float_images_are_scaled_from_0_to_1():
    values = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    values[0, :3] = [-0.5, 1.5, np.nan]
    array = decode(encode(Image.fromarray(values, "F"), "TIFF"), 32)[0]
    expected = np.floor(np.clip(np.nan_to_num(values, nan=0), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(array[..., 0], expected) and (array[..., 0] == array[..., 2]).all()


def _transparent_picture() -> tuple[np.ndarray, np.ndarray]:
    """Four colours and a transparent square: (RGB pixels, alpha 0/255)."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :16], rgb[:16, 16:], rgb[16:, :16], rgb[16:, 16:] = (200, 30, 30), (30, 200, 30), \
        (30, 30, 200), (90, 90, 90)
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[8:24, 8:24] = 0
    return rgb, alpha


def test_every_form_of_transparency_gives_the_same_model_input():
    rgb, alpha = _transparent_picture()
    expected = np.where(alpha[..., None] == 0, 255, rgb).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    key = (1, 2, 3)  # a colour the picture does not use, marking the transparent pixels
    keyed = np.where(alpha[..., None] == 0, np.array(key, np.uint8), rgb).astype(np.uint8)
    palette = rgba.quantize(colors=8, method=Image.Quantize.FASTOCTREE)  # P + palette alpha
    forms = {
        "RGBA PNG": encode(rgba, "PNG"),
        "palette PNG (tRNS)": encode(palette, "PNG"),
        "GIF (transparent index)": encode(palette, "GIF", transparency=palette.getpixel((10, 10))),
        "RGB PNG, colour key": encode(Image.fromarray(keyed), "PNG", transparency=key),
        "lossless WebP": encode(rgba, "WEBP", lossless=True),
    }
    for name, data in forms.items():
        assert np.array_equal(decode(data, 32)[0], expected), name


def test_grey_transparency_is_the_same_in_every_bit_depth():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, :4] = 0  # the columns whose grey value is 0, 8, 16, 24
    grey[:, :4] = 5  # ... all set to one key value, 5, not used elsewhere
    expected = np.repeat(np.where(alpha == 0, 255, grey)[..., None], 3, axis=2)
    forms = {
        "LA PNG": encode(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"),
        "L PNG, colour key": encode(Image.fromarray(grey, "L"), "PNG", transparency=5),
        "16-bit PNG, colour key": grey16(grey.astype(np.uint16) * 257, transparency=5 * 257),
    }
    for name, data in forms.items():
        assert np.array_equal(decode(data, 32)[0], expected), name


def test_ordinary_8_bit_images_keep_pillows_plain_conversion():
    """The cache contract: RGB, grayscale, palette (no transparency) and CMYK files decode to
    exactly what Pillow's own RGB conversion gives, as before the rule was extended."""
    img = picture(48, 40)
    for mode, fmt in (("RGB", "PNG"), ("RGB", "JPEG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG")):
        data = encode(img.convert(mode), fmt)
        with Image.open(io.BytesIO(data)) as opened:
            expected = np.asarray(images.fit_square(opened.convert("RGB"), 32))
        assert np.array_equal(decode(data, 32)[0], expected), (mode, fmt)


def test_a_jpeg_that_pillow_calls_mpo_is_a_jpeg():
    img = picture()
    mpo = encode(img, "MPO", save_all=True, append_images=[img.rotate(90)], quality=80)
    with Image.open(io.BytesIO(mpo)) as opened:
        assert opened.format == "MPO"
    array, info = decode(mpo, 32)
    plain_array, plain = decode(encode(img, "JPEG", quality=80), 32)
    assert info.format == "JPEG" and info.jpeg_quality == 80
    assert info.qtables_id == plain.qtables_id and np.array_equal(array, plain_array)


def test_32_bit_integer_images_are_scaled_by_their_types_range_with_a_note():
    """A 32-bit integer TIFF (Pillow's mode I) was clipped at 65535: almost every pixel white.
    Now 0..2**31-1 maps to 0..255 like 16-bit images (negative values 0), and a note says so;
    16-bit files Pillow opens as mode I (PGM) keep the 16-bit scale, without a note."""
    values = np.tile(np.array([-5, 0, 1 << 23, 1 << 30, (1 << 31) - 1], np.int32), (32, 7))[:, :32]
    data = encode(Image.fromarray(values, "I"), "TIFF")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "I" and images.integer_type(opened) == (32, True)
    array, info = decode(data, 32)
    assert array[0, :5, 0].tolist() == [0, 0, 1, 128, 255]
    assert info.notes and info.notes[0].startswith("32-bit signed integer pixels scaled by the type's range")
    pgm = grey16(np.full((32, 32), 32768), "PPM")
    with Image.open(io.BytesIO(pgm)) as opened:
        assert opened.mode == "I" and images.integer_type(opened) == (16, False)
    array, info = decode(pgm, 32)
    assert (array == 128).all() and info.notes == ()
