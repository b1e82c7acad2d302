"""What an image file's bytes say before its pixels are decoded: the segments that are only
metadata (to decode a file without them), why Pillow could not identify a file, how many scans
a JPEG asks the decoder to run, and the JPEG quality its tables stand for. Used by :mod:`helpers.core.images`; nothing here decodes pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from .repro import fingerprint_bytes


def describe(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for a file's reason."""
    text = str(err).splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_without_metadata(data: bytes) -> bytes | None:
    """The JPEG without its APP1-APP13, APP15 and comment segments (EXIF, XMP, ICC, MPF,
    Photoshop, text); APP0 (JFIF) and APP14 (Adobe colour transform) are kept, and everything
    from the first scan on is copied as is. None when the segments cannot be walked."""
    out, i = [data[:2]], 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            out.append(data[i:i + 2])
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan (entropy-coded data follows) or end
            out.append(data[i:])
            return b"".join(out)
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        if not (0xE1 <= marker <= 0xEF and marker != 0xEE) and marker != 0xFE:
            out.append(data[i:i + 2 + length])
        i += 2 + length
    return None


def _png_without_metadata(data: bytes) -> bytes | None:
    """The PNG with only its critical chunks and tRNS (transparency changes pixels under
    rule 2); text, EXIF, ICC, gamma and animation chunks are dropped. None when truncated."""
    out, i = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while i + 12 <= len(data):
        length, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        end = i + 12 + length
        if end > len(data):
            return None
        if kind[:1].isupper() or kind == b"tRNS":  # critical chunks start upper-case
            out.append(data[i:end])
        if kind == b"IEND":
            return b"".join(out)
        i = end
    return None


def without_metadata(data: bytes) -> bytes | None:
    """JPEG or PNG bytes with only the segments the pixels need; None for other formats,
    for files that cannot be walked and when there was nothing to drop."""
    if data[:2] == b"\xff\xd8":
        stripped = _jpeg_without_metadata(data)
    elif data[:8] == _PNG_SIGNATURE:
        stripped = _png_without_metadata(data)
    else:
        return None
    return stripped if stripped is not None and stripped != data else None


def why_unidentified(data: bytes) -> str:
    """The reason for a file Pillow cannot identify. Pillow hides why the plugin of a PNG,
    JPEG or WebP refused it (a broken chunk is reported as "cannot identify"); its plugin,
    asked directly, says."""

    for matches, plugin in ((data.startswith(_PNG_SIGNATURE), PngImagePlugin.PngImageFile),
                            (data.startswith(b"\xff\xd8\xff"), JpegImagePlugin.JpegImageFile),
                            (data[:4] == b"RIFF" and data[8:12] == b"WEBP",
                             WebPImagePlugin.WebPImageFile)):
        if matches:
            try:
                plugin(io.BytesIO(data)).close()
            except Exception as err:  # noqa: BLE001 - the plugin's own complaint
                return f"corrupt or truncated image ({describe(err)})"
    return "not an image file (Pillow cannot identify it)"


def _first_scan(data: bytes) -> int | None:
    """Offset of a JPEG's first start-of-scan marker, found by walking its segments (an EXIF
    thumbnail's own markers inside APP1 are stepped over); None when they cannot be walked."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xDA:
            return i
        if marker == 0xD9:
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def jpeg_scans(data: bytes) -> int:
    """Scans (start-of-scan markers) of a JPEG; 0 for other formats. A progressive JPEG is
    decoded in one pass over its coefficients per scan, so its decoding work is this count
    times its pixels: standard encoders write 1 (baseline) or about 10 (progressive). In the
    entropy-coded data a 0xFF byte is always followed by 0x00 or a marker, so every
    ``FF DA`` after the first scan starts another scan."""
    if data[:2] != b"\xff\xd8":
        return 0
    first = _first_scan(data)
    return 0 if first is None else 1 + data.count(b"\xff\xda", first + 2)


# IJG standard luminance table (quality 50), in natural order, used to estimate JPEG quality.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


def _ijg_tables() -> np.ndarray:
    """The IJG luminance table scaled to every quality 1-100, each sorted: (100, 64)."""
    quality = np.arange(1, 101, dtype=np.float64)[:, None]
    scale = np.where(quality < 50, 5000 / quality, 200 - 2 * quality)
    return np.sort(np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255), axis=1)


_IJG_SORTED = _ijg_tables()


def estimate_jpeg_quality(luma_table) -> int:
    """Estimate the IJG quality (1-100) whose scaled standard table best matches ``luma_table``
    (the lowest such quality on a tie).

    Pillow exposes the tables in zig-zag order while ``_IJG_LUMA`` is in natural order, so the
    comparison is done on sorted values, which the IJG scaling preserves. All 100 candidate
    tables are compared at once: a loop over them cost 1 ms per file, most of the time of
    decoding a 32x32 JPEG.
    """
    table = np.sort(np.asarray(luma_table, dtype=np.float64))
    return int(np.abs(_IJG_SORTED - table).sum(axis=1).argmin()) + 1


def qtables_id(tables: dict) -> str:

    return fingerprint_bytes(*(bytes(np.asarray(tables[k], dtype=np.uint16)) for k in sorted(tables)))


def jpeg_tables(img: Image.Image) -> dict | None:
    """The quantisation tables of a JPEG (or MPO) as Pillow parsed them; None when absent or
    not 64 values each (a damaged table leaves the file a JPEG without a quality estimate)."""
    tables = getattr(img, "quantization", None)
    if not isinstance(tables, dict) or 0 not in tables:
        return None
    return tables if all(len(t) == 64 for t in tables.values()) else None
