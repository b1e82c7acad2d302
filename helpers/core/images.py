"""How any image file becomes a model input: one rule, used by the cache and by ``predict``.

The rule (also in docs/data-and-preprocessing.md):

1. Decode with Pillow and apply the EXIF orientation. A file's cost is bounded before any
   pixel is decoded, from its header: images over 180 million pixels (``MAX_PIXELS``), with
   a long side over 50 times the short one (``MAX_ASPECT``), or JPEGs of more than 100 scans
   (``MAX_JPEG_SCANS``: each scan is one more pass over every pixel) are refused with the
   reason; the pixels being decoded at once by all threads are held under
   ``DECODE_MEMORY_BYTES`` (:data:`DECODE_BUDGET`). A file
   whose metadata is malformed but whose pixels decode is kept: unreadable EXIF leaves it
   unrotated, and a JPEG or PNG that fails only because of a metadata segment is decoded
   without its metadata; either way the file's notes say so.
2. Convert to 8-bit RGB, one rule per pixel format: 8-bit grayscale is replicated to three
   channels; integer images are scaled by their type's range, never by their own values:
   16-bit ones keep the high byte of each value (value // 256, 0..65535 mapped to 0..255, as
   Pillow reduces 16-bit colour PNGs), 32-bit ones value // 2**24 (signed types: 0..2**31-1
   to 0..255, negative values 0), with a note; float images map 0..1 to 0..255 (clipped, NaN as 0); palette
   images are expanded; CMYK is converted by Pillow; every kind of transparency (an alpha
   channel, palette transparency, a colour key in a grayscale or RGB image) is composited
   onto a white background the same way.
3. Only for datasets whose classes were saved with different JPEG tables (the shoes set: real
   photos at quality 95, Midjourney images at 90): re-encode every image once at one common
   quality (``jpeg_quality``), so the last compression carries no label information.
4. If the image is not ``size`` x ``size``: scale it so its *shorter* side equals ``size``
   (bicubic, antialiased) and cut out the centre ``size`` x ``size`` square. A 1024x768
   photo at ``size=32`` becomes 43x32, then its central 32x32 crop. With rule 1's aspect
   limit the scaled image is at most 50 x ``size``² pixels; beyond it the centre square
   is cut from the source first.

Images already at the target size are never resampled, so their pixel-level artefacts, the
signal a detector reads, stay untouched. Whatever Pillow or a codec raises for one file
becomes a :class:`BadImageError` naming the reason: one bad file never stops a run.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, UnidentifiedImageError

from .image_bytes import describe as _describe
from .image_bytes import estimate_jpeg_quality, jpeg_tables, qtables_id, why_unidentified, without_metadata
from .image_cost import (  # noqa: F401
    DECODE_BUDGET,
    DECODE_MEMORY_BYTES,
    JPEG_FORMATS,
    MAX_ASPECT,
    MAX_JPEG_SCANS,
    SNIFF_BYTES,
    cost_problem,
    decode_cost,
    file_problem,
    header,
    identified,
)
from .paths import printable

#: Largest image accepted, in pixels (~ 16k x 11k), checked from the header before decoding.
MAX_PIXELS = 180_000_000
# Pillow's own guard raises only above twice its limit (and merely warns above it): the
# check in :func:`decode` enforces MAX_PIXELS itself; this keeps Pillow's error for the rest.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
#: Largest file accepted, in bytes: a file is read whole into memory before decoding.
MAX_FILE_BYTES = 1 << 30


def _decodable_suffixes() -> frozenset[str]:
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


#: Suffixes of files taken as images in a folder: every suffix Pillow registers for a format
#: it decodes (``.jfif``, ``.jpe``, ``.avif``, ``.jp2``, ...), and the common ones.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
                           | _decodable_suffixes())
#: Integer modes, scaled by their type's range (:func:`integer_type`); Pillow opens 16-bit
#: PGM/PPM and signed 16-bit TIFF as "I" too, 32-bit integer TIFF as "I".
INTEGER_MODES = SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
#: Modes whose transparency lives in an alpha band or the palette.
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA", "P"})

_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}



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


def integer_type(img: Image.Image) -> tuple[int, bool]:
    """Bits and signedness of an integer image's samples, from its file's header: Pillow's
    mode "I" holds 16-bit PGM/PPM (scaled by Pillow to 0..65535), signed 16-bit TIFF and 32-bit
    TIFF alike. Modes "I;16*" are unsigned 16-bit; an "I" image of no known format is Pillow's
    own signed 32-bit type."""
    if img.mode != "I" or img.format in ("PNG", "PPM"):
        return 16, False
    tags = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tags is not None:
        bits, kind = tags.get(258, (32,)), tags.get(339, (1,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        kind = kind[0] if isinstance(kind, tuple) else kind
        return (int(bits) if int(bits) in (16, 32) else 32), int(kind) == 2
    return 32, True


def integer_note(bits: int, signed: bool) -> str | None:
    """The note of an integer image whose scale is not the usual 16-bit one; None otherwise."""
    if bits == 16 and not signed:
        return None
    top = (1 << (bits - 1 if signed else bits)) - 1
    return (f"{bits}-bit {'signed ' if signed else ''}integer pixels scaled by the type's range "
            f"(0..{top:,} to 0..255{', negative values as 0' if signed else ''}): values using "
            "a small part of the range come out dark")


def _sixteen_bit_or_float(img: Image.Image, kind: tuple[int, bool] | None = None) -> Image.Image:
    """8-bit RGB (or RGBA with a colour key's transparency) of a 16-bit, 32-bit int or float
    grayscale image, scaled by the type's range (``kind``: :func:`integer_type`), never by the
    image's own values."""
    raw = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.floor(np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        bits, signed = kind or integer_type(img)
        top = bits - 1 if signed else bits  # bits of the non-negative range
        values = raw.view(np.uint32) if (bits, signed) == (32, False) and raw.dtype == np.int32 else raw
        grey = (np.clip(values.astype(np.int64), 0, (1 << top) - 1) >> (top - 8)).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):  # PNG tRNS of a grey image
        alpha = np.where(raw == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA")
    return Image.fromarray(grey, "L").convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image, kind: tuple[int, bool] | None = None) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB following the module's rule 2 (``kind``: an
    integer image's type, :func:`integer_type` of the file as opened; a transposed copy has
    lost its header).

    Raises whatever Pillow raises for a mode it cannot convert (:func:`decode` turns that
    into the file's reason).
    """
    if img.mode in INTEGER_MODES or img.mode == "F":
        img = _sixteen_bit_or_float(img, kind)
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
    """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` crop.

    The scaled image holds at most ``MAX_ASPECT`` x ``size``² pixels for every image
    :func:`decode` accepts. A longer one (a caller's own array) has its centre square cut from
    the source first and resized alone, so the cost follows the output, not the long side.
    (Cropping first in every case would change the pixels of most non-square images, by up to
    23 levels in a sample of random sizes, and with them every cache and detector built on
    non-square images.)
    """
    if img.size == (size, size):
        return img
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if max(new_w, new_h) > MAX_ASPECT * size:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.resize((size, size), Image.Resampling.BICUBIC,
                          box=(left, top, left + side, top + side))
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


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _Refused(why_unidentified(data)) from None
    except Image.DecompressionBombError as err:
        raise _Refused(f"too large to decode safely ({err})", final=True) from None
    except Exception as err:  # noqa: BLE001 - a plugin's header parser may raise anything
        raise _Refused(f"corrupt or truncated image ({_describe(err)})") from None


#: Set in a thread while :func:`decode_file` holds the budget for its file's bytes and pixels.
_BUDGET_HELD = threading.local()


def _decode(data: bytes, size: int, jpeg_quality: int | None) -> tuple[np.ndarray, ImageInfo]:
    """:func:`decode`'s stages; each failure is raised as :class:`_Refused` with its reason."""
    with _open(data) as img:
        problem = cost_problem(img, data, MAX_PIXELS)
        if problem:
            raise _Refused(problem, final=True)
        if getattr(_BUDGET_HELD, "active", False):  # decode_file holds it for the whole file
            return _pixels(img, size, jpeg_quality)
        with DECODE_BUDGET.hold(decode_cost(img.width, img.height, img.mode)):
            return _pixels(img, size, jpeg_quality)


def _pixels(img: Image.Image, size: int, jpeg_quality: int | None) -> tuple[np.ndarray, ImageInfo]:
    """Decode, turn upright, convert and fit an opened image whose cost was checked."""
    fmt = "JPEG" if img.format in JPEG_FORMATS else (img.format or "?")
    try:
        img.load()  # force the full decode here: truncated files fail now, not later
        tables = jpeg_tables(img) if fmt == "JPEG" else None
    except Exception as err:  # noqa: BLE001 - OSError, SyntaxError, struct.error, ...
        raise _Refused(f"corrupt or truncated image ({_describe(err)})") from None
    info = ImageInfo(
        width=img.width, height=img.height, mode=img.mode, format=fmt,
        jpeg_quality=estimate_jpeg_quality(tables[0]) if tables else None,
        qtables_id=qtables_id(tables) if tables else None,
    )
    kind = integer_type(img) if img.mode in INTEGER_MODES else None
    turned, note = upright(img)
    try:
        rgb = to_rgb(turned, kind)
    except Exception as err:  # noqa: BLE001 - a mode Pillow cannot convert
        raise _Refused(f"unsupported pixel format {img.mode} ({_describe(err)})") from None
    try:
        if jpeg_quality:
            rgb = recompress(rgb, jpeg_quality)
        array = np.asarray(fit_square(rgb, size), dtype=np.uint8).copy()
    except Exception as err:  # noqa: BLE001 - e.g. MemoryError on a huge image
        raise _Refused(f"cannot resize ({_describe(err)})") from None
    notes = tuple(n for n in (note, integer_note(*kind) if kind else None) if n)
    return array, replace(info, notes=notes)


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
    """:func:`decode` for a file on disk; an unreadable, missing, empty, special or oversized
    file is a :class:`BadImageError` too, and a file over ``SNIFF_BYTES`` that Pillow does not
    identify from its header is refused without being read whole (a video in a folder of
    photos costs a header). The file's bytes and its pixels are held under one
    :data:`DECODE_BUDGET` while it is read and decoded (estimated from its header), so threads
    reading large files at once wait for each other. The name in messages is escaped
    (:func:`helpers.core.paths.printable`)."""

    name = printable(path)
    try:
        st = os.stat(path)
        problem = file_problem(st, MAX_FILE_BYTES)
        if problem:
            raise BadImageError(f"{name}: {problem}")
        with open(path, "rb") as file:
            known, cost = header(file)
            if st.st_size > SNIFF_BYTES and not known:
                raise BadImageError(f"{name}: not an image file (Pillow cannot identify it)")
            with DECODE_BUDGET.hold(st.st_size + cost):
                data = file.read()
                _BUDGET_HELD.active = True
                try:
                    return decode(data, size, name, jpeg_quality)
                finally:
                    _BUDGET_HELD.active = False
    except OSError as err:
        raise BadImageError(f"{name}: cannot read file ({err.strerror})") from None
