"""What one image file may cost, decided before its pixels are decoded (rule 1 of
:mod:`helpers.core.images`): the kinds of file that are never opened, the header limits
(pixels, aspect ratio, JPEG scans) and the memory budget shared by threads decoding at once.

The bound, per file: its bytes (at most ``images.MAX_FILE_BYTES``) plus about
:func:`decode_cost` of its pixels (at most ``images.MAX_PIXELS``); its decoding work is at
most ``MAX_JPEG_SCANS`` passes over those pixels. Over all threads of a process the pixel
memory in flight stays under ``DECODE_MEMORY_BYTES`` (a file that needs more runs alone).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from .image_bytes import jpeg_scans

#: Longest side over shortest side accepted, checked from the header: beyond it the centre
#: square keeps under 2% of the picture (a 1x300,000 web spacer strip keeps one pixel), and
#: scaling the short side up first would cost the long side's share.
MAX_ASPECT = 50
#: Most scans a JPEG may hold. A progressive JPEG is decoded in one pass over every pixel per
#: scan, so a small file of many scans multiplies the work without adding pixels; encoders
#: write 1 (baseline) or about 10 (progressive).
MAX_JPEG_SCANS = 100
#: Memory for the pixels of the files being decoded at once, over all threads (estimated from
#: each header by :func:`decode_cost`); a file needing more than all of it is decoded alone.
DECODE_MEMORY_BYTES = 2 << 30
#: Files larger than this are identified from their header before they are read whole.
SNIFF_BYTES = 1 << 20
#: Estimated peak bytes per pixel while decoding, converting and fitting, by mode (others 16:
#: Pillow holds RGB as 4 bytes a pixel, the upright copy and the RGB conversion 4 more each);
#: integer and float images pass through 64-bit arrays.
_BYTES_PER_PIXEL = {**dict.fromkeys(("I", "I;16", "I;16L", "I;16B", "I;16N"), 40), "F": 56}

#: Formats that are JPEG for the quality estimate and the shortcut checks: Pillow names a
#: camera JPEG carrying a multi-picture (MPF) segment "MPO".
JPEG_FORMATS = frozenset({"JPEG", "MPO"})


class DecodeBudget:
    """Bytes of pixel memory that threads decoding at once may hold together: a thread waits
    until its file's estimate fits beside the others' (a file needing more than the whole
    budget waits for all others and runs alone), so N decoding threads cost at most the budget,
    not N files' worth."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.held = capacity, 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        amount = max(0, min(int(amount), self.capacity))
        with self._free:
            self._free.wait_for(lambda: self.held + amount <= self.capacity)
            self.held += amount
        try:
            yield
        finally:
            with self._free:
                self.held -= amount
                self._free.notify_all()


#: The one budget of this process (``predict``'s threads, the app, the data step).
DECODE_BUDGET = DecodeBudget(DECODE_MEMORY_BYTES)


def decode_cost(width: int, height: int, mode: str) -> int:
    """Estimated peak bytes of decoding and converting an image (its file's bytes not counted)."""
    return width * height * _BYTES_PER_PIXEL.get(mode, 16)


def cost_problem(img: Image.Image, data: bytes | None, max_pixels: int) -> str | None:
    """Why an opened (not yet decoded) image is refused from its header: over ``max_pixels``
    pixels, beyond ``MAX_ASPECT``, or (given its ``data``) a JPEG of over ``MAX_JPEG_SCANS``
    scans. None when its cost is within the limits."""
    w, h = img.size
    if w * h > max_pixels:
        return f"too large to decode safely ({w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,})"
    if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        kept = 100 * min(w, h) / max(w, h, 1)
        return (f"too thin to classify ({w}x{h}: its long side is over {MAX_ASPECT} times the "
                f"short one, and the centre square would keep {kept:.2g}% of it). Crop it to "
                "the part to classify")
    scans = jpeg_scans(data) if data is not None and img.format in JPEG_FORMATS else 0
    if scans > MAX_JPEG_SCANS:
        return (f"too costly to decode safely (a JPEG of {scans:,} scans, each one more pass over "
                f"every pixel; the limit is {MAX_JPEG_SCANS}, and encoders write about 10). "
                "Re-save it as an ordinary JPEG")
    return None


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def file_problem(st: os.stat_result, max_file_bytes: int) -> str | None:
    """Why a file with this ``os.stat`` result cannot be an image file, known before opening it
    (a FIFO or device would block or never end); None for a non-empty regular file within
    ``max_file_bytes``."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special")
        return f"not a regular file ({kind})"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if st.st_size > max_file_bytes:
        return f"too large to decode safely ({st.st_size:,} bytes; the limit is {max_file_bytes:,})"
    return None


def header(file) -> tuple[bool, int]:
    """What an open binary file's header says, before it is read whole: whether Pillow
    identifies it (a PNG, JPEG or WebP signature counts: why such a file fails is told from the
    whole file) and the :func:`decode_cost` of its pixels (0 when unknown). Leaves it at 0."""
    head = file.read(16)
    file.seek(0)
    signed = head.startswith((b"\x89PNG", b"\xff\xd8\xff")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    try:
        with Image.open(file) as img:
            return True, decode_cost(img.width, img.height, img.mode)
    except UnidentifiedImageError:
        return signed, 0
    except Exception:  # noqa: BLE001 - identified but refused: decoding says why
        return True, 0
    finally:
        file.seek(0)


def identified(file) -> bool:
    """Whether Pillow identifies an open binary file from its header (:func:`header`)."""
    return header(file)[0]
