"""Reproducibility: seeds, environment and data fingerprints, atomic writes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

#: Packages whose versions are recorded with every result.
TRACKED_PACKAGES = (
    "torch", "torchvision", "numpy", "pillow", "scikit-learn", "scipy", "pandas",
    "matplotlib", "seaborn", "opencv-python", "grad-cam", "kagglehub", "papermill",
)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on request make torch pick deterministic kernels.

    CPU runs with the same seed and thread count then give identical numbers. On CUDA,
    ``deterministic=True`` also disables cuDNN autotuning, which costs some speed.
    """

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment_fingerprint() -> dict[str, Any]:
    """Python, platform, package versions and accelerator: saved next to every result."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {p: v for p in TRACKED_PACKAGES if (v := _version(p))},
    }
    with contextlib.suppress(ImportError):

        info["torch_threads"] = torch.get_num_threads()
        # CPU kernels (and bf16 autocast, helpers.core.accel.cpu_has_bf16) depend on the instruction set
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fingerprint_bytes(*chunks: bytes | np.ndarray) -> str:
    """Short content hash (BLAKE2b, 16 hex digits) of byte strings or arrays."""
    digest = hashlib.blake2b(digest_size=8)
    for chunk in chunks:
        digest.update(chunk.tobytes() if isinstance(chunk, np.ndarray) else chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A crash half-way leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the usual permissions (0666 - umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (sorted keys, indented) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return Path(path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically (the old file survives a crash half-way), without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def json_ready(value: Any) -> Any:
    """A copy of ``value`` that strict JSON can hold: NaN becomes null, dicts get string keys,
    tuples become lists, and numpy values, paths and dataclasses (intervals) what
    :func:`_jsonable` makes of them."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.generic, np.ndarray, Path)) or dataclasses.is_dataclass(value):
        with contextlib.suppress(TypeError):
            return json_ready(_jsonable(value))
    return value


def _jsonable(value: Any) -> Any:
    """What JSON writes for a numpy scalar or array, a path or a dataclass instance
    (:func:`write_json`'s ``default``); TypeError for anything else."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
