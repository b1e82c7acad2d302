"""Where things live: one obvious place for data, results and figures."""

from __future__ import annotations

import os
from pathlib import Path

#: Project root: the folder holding ``helpers/``. Overridable for tests and Colab.
ROOT = Path(os.environ.get("AIDETECT_ROOT", Path(__file__).resolve().parents[2]))
DATA = Path(os.environ.get("AIDETECT_DATA", ROOT / "data"))
RESULTS = Path(os.environ.get("AIDETECT_RESULTS", ROOT / "results"))


def use_storage(root: str | os.PathLike) -> tuple[Path, Path]:
    """Keep ``data/`` and ``results/`` under ``root`` from now on (Google Drive in Colab, so that
    a later notebook or a later runtime finds them); child processes and notebook kernels
    follow through ``AIDETECT_DATA`` and ``AIDETECT_RESULTS``. Returns the two folders."""
    global DATA, RESULTS
    root = Path(root).expanduser().resolve()
    DATA, RESULTS = root / "data", root / "results"
    os.environ["AIDETECT_DATA"], os.environ["AIDETECT_RESULTS"] = str(DATA), str(RESULTS)
    return DATA, RESULTS


def raw_dir(dataset: str) -> Path:
    """Immutable raw data of a dataset (downloads, the generated demo set)."""
    return DATA / "raw" / dataset


def processed_dir(dataset: str) -> Path:
    """Derived data of a dataset (decoded caches, GAN exports); safe to delete."""
    return DATA / "processed" / dataset


def probe_cache() -> Path:
    """Where this machine's speed probes are kept (:func:`helpers.core.precision_probe.cached_probe`):
    ``data/processed/cpu_precision.json``, derived and safe to delete."""
    return DATA / "processed" / "cpu_precision.json"


def results_dir(dataset: str, *parts: str) -> Path:
    """``results/<dataset>/<parts...>``, created on demand."""
    path = RESULTS.joinpath(dataset, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def printable(name: str | os.PathLike) -> str:
    """A file name as reports, CSVs and the app show it: valid text on any terminal or file.

    File names are bytes. Python hands names that are not valid UTF-8 over with each bad
    byte as a lone surrogate (``os.fsdecode``); writing those to a UTF-8 file or terminal
    raises. Here each such byte becomes ``\\xNN`` and every other unprintable character
    (control codes, bidirectional overrides) its ``\\x``/``\\u`` escape; ordinary names,
    CIFAKE's ``0 (10).jpg`` and non-ASCII ones such as ``café.jpg``, are returned unchanged.
    """
    text = os.fspath(name)
    if text.isprintable():  # the usual case, and the cheap test
        return text
    return "".join(
        ch if ch.isprintable()
        else f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF  # an undecodable byte
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def shown(path: str | os.PathLike) -> str:
    """``path`` as reports show it: relative to the project root when inside it, so a report
    reads the same in every clone; absolute otherwise (a dataset copy elsewhere on disk).
    Undecodable bytes and control characters are escaped (:func:`printable`)."""
    path = Path(path).resolve()
    try:
        return printable(path.relative_to(ROOT.resolve()).as_posix())
    except ValueError:
        return printable(str(path))
