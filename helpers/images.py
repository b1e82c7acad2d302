"""How any image file becomes a model input: one rule, used by the cache and by ``predict``.

The rule (documented in the README):

1. Decode with Pillow and apply the EXIF orientation.
2. Convert to 8-bit RGB: grayscale is replicated to three channels; 16-bit and float images
   are scaled to 0-255; palette images are expanded; CMYK is converted by Pillow; an alpha
   channel is composited onto a white background.
3. Only for datasets whose classes were saved with different JPEG tables (the shoes set: real
   photos at quality 95, Midjourney images at 90): re-encode every image once at one common
   quality (``jpeg_quality``), so the last compression carries no label information.
4. If the image is not ``size`` x ``size``: scale it so its *shorter* side equals ``size``
   (bicubic, antialiased) and cut out the centre ``size`` x ``size`` square. A 1024x768
   photo at ``size=32`` becomes 43x32, then its central 32x32 crop.

Images already at the target size are never resampled, so their pixel-level artefacts, the
signal a detector reads, stay untouched.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Pillow refuses images above this many pixels (decompression-bomb guard), ~ 16k x 11k.
Image.MAX_IMAGE_PIXELS = 180_000_000

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# IJG standard luminance table (quality 50), in natural order, used to estimate JPEG quality.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


class BadImageError(ValueError):
    """A file that cannot be turned into an RGB image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """What the decoder saw before conversion: kept per file in the cache's records."""

    width: int
    height: int
    mode: str
    format: str
    jpeg_quality: int | None  # IJG-equivalent quality of the luminance table; None if not JPEG
    qtables_id: str | None  # hash of all quantisation tables; None if not JPEG


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
    from .repro import fingerprint_bytes

    return fingerprint_bytes(*(bytes(np.asarray(tables[k], dtype=np.uint16)) for k in sorted(tables)))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB following the module's rule."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
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


def decode(data: bytes, size: int, name: str = "<bytes>",
           jpeg_quality: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes into a ``size`` x ``size`` x 3 uint8 array and what was seen.

    ``jpeg_quality`` re-encodes the image once at that quality before resizing (rule 3).

    Raises :class:`BadImageError` with the reason for anything that is not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or "?"
            tables = getattr(img, "quantization", None) if fmt == "JPEG" else None
            img.load()  # force the full decode here: truncated files fail now, not later
            info = ImageInfo(
                width=img.width, height=img.height, mode=img.mode, format=fmt,
                jpeg_quality=estimate_jpeg_quality(tables[0]) if tables else None,
                qtables_id=_qtables_id(tables) if tables else None,
            )
            img = ImageOps.exif_transpose(img)
            rgb = to_rgb(img)
            if jpeg_quality:
                rgb = recompress(rgb, jpeg_quality)
            rgb = fit_square(rgb, size)
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image file (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as err:
        raise BadImageError(f"{name}: too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: corrupt or truncated image ({err})") from None
    return np.asarray(rgb, dtype=np.uint8).copy(), info


def decode_file(path, size: int, jpeg_quality: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """:func:`decode` for a file on disk; a missing file is a :class:`BadImageError` too."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise BadImageError(f"{path}: cannot read file ({err.strerror})") from None
    return decode(data, size, str(path), jpeg_quality)
