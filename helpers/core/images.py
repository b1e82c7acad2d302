"""How any image file becomes a model input: one rule, used by the cache and by ``predict``.

The rule (also in docs/data-and-preprocessing.md):

1. Decode with Pillow and apply the EXIF orientation. Images over 180 million pixels
   (``MAX_PIXELS``) are refused from their header, before any pixel is decoded. A file
   whose metadata is malformed but whose pixels decode is kept: unreadable EXIF leaves it
   unrotated, and a JPEG or PNG that fails only because of a metadata segment is decoded
   without its metadata; either way the file's notes say so.
2. Convert to 8-bit RGB, one rule per pixel format: 8-bit grayscale is replicated to three
   channels; 16-bit integer images keep the high byte of each value (value // 256, the
   type's range 0..65535 mapped to 0..255, as Pillow reduces 16-bit colour PNGs), the same
   scale for every image; float images map 0..1 to 0..255 (clipped, NaN as 0); palette
   images are expanded; CMYK is converted by Pillow; every kind of transparency (an alpha
   channel, palette transparency, a colour key in a grayscale or RGB image) is composited
   onto a white background the same way.
3. Only for datasets whose classes were saved with different JPEG tables (the shoes set: real
   photos at quality 95, Midjourney images at 90): re-encode every image once at one common
   quality (``jpeg_quality``), so the last compression carries no label information.
4. If the image is not ``size`` x ``size``: scale it so its *shorter* side equals ``size``
   (bicubic, antialiased) and cut out the centre ``size`` x ``size`` square. A 1024x768
   photo at ``size=32`` becomes 43x32, then its central 32x32 crop.

Images already at the target size are never resampled, so their pixel-level artefacts, the
signal a detector reads, stay untouched. Whatever Pillow or a codec raises for one file
becomes a :class:`BadImageError` naming the reason: one bad file never stops a run.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError, WebPImagePlugin

from .paths import printable
from .repro import fingerprint_bytes

#: Largest image accepted, in pixels (~ 16k x 11k), checked from the header before decoding.
MAX_PIXELS = 180_000_000
# Pillow's own guard raises only above twice its limit (and merely warns above it): the
# check in :func:`decode` enforces MAX_PIXELS itself; this keeps Pillow's error for the rest.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
#: Largest file accepted, in bytes: a file is read whole into memory before decoding.
MAX_FILE_BYTES = 1 << 30

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: Formats that are JPEG for the quality estimate and the shortcut checks: Pillow names a
#: camera JPEG carrying a multi-picture (MPF) segment "MPO".
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
#: Integer modes scaled as 16-bit (0..65535); Pillow opens 16-bit PGM/PPM as "I".
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
#: Modes whose transparency lives in an alpha band or the palette.
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA", "P"})

_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}

# IJG standard luminance table (quality 50), in natural order, used to estimate JPEG quality.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


class BadImageError(ValueError):
    """A file that cannot be turned into an RGB image; the message says why."""


class _Refused(Exception):
    """One stage of :func:`_decode` failed; ``reason`` is the file's reason, ``final`` says
    that decoding without metadata cannot help (the header says the image is too large)."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.final = reason, final


@dataclass(frozen=True)
class ImageInfo:
    """What the decoder saw before conversion: kept per file in the cache's records."""

    width: int
    height: int
    mode: str
    format: str  # "JPEG" for every format of JPEG_FORMATS
    jpeg_quality: int | None  # IJG-equivalent quality of the luminance table; None if not JPEG
    qtables_id: str | None  # hash of all quantisation tables; None if not JPEG
    notes: tuple[str, ...] = ()  # metadata that was malformed and left out, one sentence each


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


def _qtables_id(tables: dict) -> str:

    return fingerprint_bytes(*(bytes(np.asarray(tables[k], dtype=np.uint16)) for k in sorted(tables)))


def _describe(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for a file's reason."""
    text = str(err).splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _jpeg_tables(img: Image.Image) -> dict | None:
    """The quantisation tables of a JPEG (or MPO) as Pillow parsed them; None when absent or
    not 64 values each (a damaged table leaves the file a JPEG without a quality estimate)."""
    tables = getattr(img, "quantization", None)
    if not isinstance(tables, dict) or 0 not in tables:
        return None
    return tables if all(len(t) == 64 for t in tables.values()) else None


def upright(img: Image.Image) -> tuple[Image.Image, str | None]:
    """``img`` turned upright by its EXIF orientation, and a note when that was not possible.

    The orientation is read as :func:`PIL.ImageOps.exif_transpose` reads it (EXIF, else XMP)
    and the same transpose is applied, but the metadata is never written back: that step
    raised ``struct.error`` for EXIF blocks holding a tag of the wrong type. EXIF that cannot
    be parsed at all, or an orientation outside 1-8, leaves the image as stored, with a note.
    """
    try:
        raw = img.info.get("exif")
        if isinstance(raw, bytes) and raw:  # Pillow's JPEG reader swallows a parse error at
            Image.Exif().load(raw)          # open and then reports no EXIF at all
        value = img.getexif().get(_ORIENTATION, 1)
    except Exception as err:  # noqa: BLE001 - any parser error: the pixels are still fine
        return img, f"EXIF metadata unreadable ({_describe(err)}): orientation not applied"
    if isinstance(value, int) and not isinstance(value, bool) and value in _UPRIGHT:
        return img.transpose(_UPRIGHT[value]), None
    if isinstance(value, int) and value in (0, 1):  # 0: "undefined", written by some cameras
        return img, None
    return img, f"EXIF orientation {value!r:.40} is not 1-8: not applied"


def _sixteen_bit_or_float(img: Image.Image) -> Image.Image:
    """8-bit RGB (or RGBA with a colour key's transparency) of a 16-bit, 32-bit int or float
    grayscale image, scaled by the type's range, never by the image's own values."""
    raw = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.floor(np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        grey = (np.clip(raw.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):  # PNG tRNS of a grey image
        alpha = np.where(raw == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA")
    return Image.fromarray(grey, "L").convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB following the module's rule 2.

    Raises whatever Pillow raises for a mode it cannot convert (:func:`decode` turns that
    into the file's reason).
    """
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        img = _sixteen_bit_or_float(img)
        return _on_white(img) if img.mode == "RGBA" else img
    if img.mode == "La":  # premultiplied alpha: Pillow converts it only to LA
        img = img.convert("LA")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        # Pillow's RGBA conversion applies palette transparency and L/RGB/1 colour keys
        return _on_white(img.convert("RGBA"))
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` crop."""
    if img.size == (size, size):
        return img
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def recompress(img: Image.Image, quality: int) -> Image.Image:
    """Encode an RGB image as JPEG (4:2:0, standard tables at ``quality``) and decode it again."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as out:
        return out.convert("RGB")


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


def _why_unidentified(data: bytes) -> str:
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
                return f"corrupt or truncated image ({_describe(err)})"
    return "not an image file (Pillow cannot identify it)"


def _decode(data: bytes, size: int, jpeg_quality: int | None) -> tuple[np.ndarray, ImageInfo]:
    """:func:`decode`'s stages; each failure is raised as :class:`_Refused` with its reason."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _Refused(_why_unidentified(data)) from None
    except Image.DecompressionBombError as err:
        raise _Refused(f"too large to decode safely ({err})", final=True) from None
    except Exception as err:  # noqa: BLE001 - a plugin's header parser may raise anything
        raise _Refused(f"corrupt or truncated image ({_describe(err)})") from None
    with img:
        if img.width * img.height > MAX_PIXELS:  # from the header: nothing decoded yet
            raise _Refused(f"too large to decode safely ({img.width}x{img.height} = "
                           f"{img.width * img.height:,} pixels; the limit is {MAX_PIXELS:,})",
                           final=True)
        fmt = "JPEG" if img.format in JPEG_FORMATS else (img.format or "?")
        try:
            img.load()  # force the full decode here: truncated files fail now, not later
            tables = _jpeg_tables(img) if fmt == "JPEG" else None
        except Exception as err:  # noqa: BLE001 - OSError, SyntaxError, struct.error, ...
            raise _Refused(f"corrupt or truncated image ({_describe(err)})") from None
        info = ImageInfo(
            width=img.width, height=img.height, mode=img.mode, format=fmt,
            jpeg_quality=estimate_jpeg_quality(tables[0]) if tables else None,
            qtables_id=_qtables_id(tables) if tables else None,
        )
        turned, note = upright(img)
        try:
            rgb = to_rgb(turned)
        except Exception as err:  # noqa: BLE001 - a mode Pillow cannot convert
            raise _Refused(f"unsupported pixel format {img.mode} ({_describe(err)})") from None
        try:
            if jpeg_quality:
                rgb = recompress(rgb, jpeg_quality)
            array = np.asarray(fit_square(rgb, size), dtype=np.uint8).copy()
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError on a huge image
            raise _Refused(f"cannot resize ({_describe(err)})") from None
    return array, replace(info, notes=(note,) if note else ())


def decode(data: bytes, size: int, name: str = "<bytes>",
           jpeg_quality: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes into a ``size`` x ``size`` x 3 uint8 array and what was seen.

    ``jpeg_quality`` re-encodes the image once at that quality before resizing (rule 3).
    A JPEG or PNG that fails only because of a metadata segment is decoded again without
    its metadata (:func:`without_metadata`); ``info.notes`` then says so.

    Raises :class:`BadImageError` ``"<name>: <reason>"`` for anything else Pillow or a codec
    raises: not an image, corrupt or truncated, unsupported pixel format, too large.
    """
    if len(data) > MAX_FILE_BYTES:
        raise BadImageError(f"{name}: too large to decode safely ({len(data):,} bytes; the "
                            f"limit is {MAX_FILE_BYTES:,})")
    try:
        return _decode(data, size, jpeg_quality)
    except _Refused as err:
        failure = err
    stripped = None if failure.final else without_metadata(data)
    if stripped is not None:
        try:
            array, info = _decode(stripped, size, jpeg_quality)
        except _Refused:
            pass  # not (only) the metadata: the first reason is the file's
        else:
            note = (f"malformed metadata, decoded without it (with it: {failure.reason}); "
                    "EXIF orientation, if any, not applied")
            return array, replace(info, notes=(note, *info.notes))
    raise BadImageError(f"{name}: {failure.reason}")


def decode_file(path, size: int, jpeg_quality: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """:func:`decode` for a file on disk; an unreadable, missing, special or oversized file
    is a :class:`BadImageError` too. The name in messages is escaped
    (:func:`helpers.core.paths.printable`)."""

    name = printable(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise BadImageError(f"{name}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise BadImageError(f"{name}: too large to decode safely ({st.st_size:,} bytes; "
                                f"the limit is {MAX_FILE_BYTES:,})")
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise BadImageError(f"{name}: cannot read file ({err.strerror})") from None
    return decode(data, size, name, jpeg_quality)
