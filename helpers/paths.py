"""Where things live: one obvious place for data, results and figures."""

from __future__ import annotations

import os
from pathlib import Path

#: Project root: the folder holding ``helpers/``. Overridable for tests and Colab.
ROOT = Path(os.environ.get("AIDETECT_ROOT", Path(__file__).resolve().parents[1]))
DATA = Path(os.environ.get("AIDETECT_DATA", ROOT / "data"))
RESULTS = Path(os.environ.get("AIDETECT_RESULTS", ROOT / "results"))


def raw_dir(dataset: str) -> Path:
    """Immutable raw data of a dataset (downloads, the generated demo set)."""
    return DATA / "raw" / dataset


def processed_dir(dataset: str) -> Path:
    """Derived data of a dataset (decoded caches, GAN exports); safe to delete."""
    return DATA / "processed" / dataset


def results_dir(dataset: str, *parts: str) -> Path:
    """``results/<dataset>/<parts...>``, created on demand."""
    path = RESULTS.joinpath(dataset, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown(path: str | os.PathLike) -> str:
    """``path`` as reports show it: relative to the project root when inside it, so a report
    reads the same in every clone; absolute otherwise (a dataset copy elsewhere on disk)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)
