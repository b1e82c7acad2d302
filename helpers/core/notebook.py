"""What every notebook does first and how it saves figures (one place: ``results/``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from . import paths
from .accel import deterministic_by_default, pick_device, set_cpu_threads
from .colab import drive_storage
from .repro import atomic_path, environment_fingerprint, seed_everything

MIN_VERSIONS = {"python": (3, 10), "torch": (2, 4), "torchvision": (0, 19)}


def _parse(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:2])


def check_versions() -> dict:
    """Fail early, with the fix, when Python or torch is too old; return the environment."""
    import torchvision

    found = {"python": sys.version.split()[0], "torch": torch.__version__,
             "torchvision": torchvision.__version__}
    for name, minimum in MIN_VERSIONS.items():
        if _parse(found[name]) < minimum:
            raise RuntimeError(f"{name} {found[name]} is too old; need >= "
                               f"{'.'.join(map(str, minimum))}. Run `make env` or `pip install -e .`")
    return environment_fingerprint()


def use_storage(storage: str | None) -> None:
    """``STORAGE``, the notebooks' parameter: None keeps ``data/`` and ``results/`` in the
    project; ``"drive"`` puts them on Google Drive (Colab; :func:`helpers.core.colab.drive_storage`);
    any other string is a folder that holds them."""
    if storage is None:
        return
    root = drive_storage() if storage == "drive" else storage
    data, results = paths.use_storage(root)
    print(f"data in {data}, results in {results}")


def setup(dataset: str, seed: int = 0, deterministic: bool | None = None, device: str = "auto",
          storage: str | None = None) -> dict:
    """Check versions, seed everything, use every CPU core (and let malloc reuse freed
    activations: scoring with large batches was up to 2.5x slower without it), set the plotting
    style, and keep data and results where ``storage`` says (:func:`use_storage`); print and
    return the environment.

    ``deterministic`` None: chosen for the notebook's ``device`` (``auto`` as
    :func:`helpers.core.accel.pick_device` resolves it) by
    :func:`helpers.core.accel.deterministic_by_default`: deterministic algorithms on a CPU, cuDNN
    autotuning and fast kernels on CUDA and MPS.
    """
    import matplotlib as mpl
    import seaborn as sns

    use_storage(storage)
    set_cpu_threads()
    env = check_versions()
    if deterministic is None:
        deterministic = deterministic_by_default(pick_device(device))
    seed_everything(seed, deterministic)
    sns.set_theme(context="notebook", style="whitegrid")
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight"})
    accel = env.get("gpu") or "CPU only"
    print(f"dataset={dataset}  seed={seed}  python {env['python']}  torch "
          f"{env['packages'].get('torch')}  device: {accel}")
    return env


def save_fig(fig, dataset: str, name: str, section: str = "figures") -> Path:
    """Save ``fig`` as ``results/<dataset>/<section>/<name>.png`` (atomically) and return the path."""
    path = paths.results_dir(dataset, section) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
