"""What every notebook does first and how it saves figures (one place: ``results/``)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
from PIL import Image

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


#: Distinct colours above which a figure counts as a photo grid (plots have ~1,000).
PHOTO_COLOURS = 20_000
SAVED_DPI, SHOWN_DPI = 150, 100  # setup(): savefig.dpi and figure.dpi


def shrink_image(image: Image.Image) -> Image.Image | None:
    """``image`` as it is published: a 256-colour palette image (PNG8, as pngquant makes; line
    plots have a few hundred colours and look the same), resampled from the 150 dpi figures are
    saved at to the 100 dpi they are shown at when it is a photo grid (over
    :data:`PHOTO_COLOURS` colours: sample grids, Grad-CAM overlays, 5-10x smaller in all).
    None when it is already a palette image (published)."""
    if image.mode == "P":
        return None
    rgb = image.convert("RGB")
    if rgb.getcolors(PHOTO_COLOURS) is None:  # None: more colours than that
        size = (round(rgb.width * SHOWN_DPI / SAVED_DPI), round(rgb.height * SHOWN_DPI / SAVED_DPI))
        rgb = rgb.resize(size, Image.LANCZOS)
    return rgb.quantize(256, method=Image.Quantize.FASTOCTREE)


def png_bytes(image: Image.Image, dpi: float) -> bytes:
    """``image`` encoded as PNG (optimised) with its ``dpi`` recorded."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, dpi=(dpi, dpi))
    return buffer.getvalue()


def published_png(data: bytes) -> bytes:
    """The PNG ``data`` as committed results keep it (:func:`shrink_image`); ``data`` itself
    when it is already so."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        dpi = (image.info.get("dpi") or (SAVED_DPI,))[0]
        small = shrink_image(image)
        if small is None:
            return data
        return png_bytes(small, SHOWN_DPI if small.width != image.width else dpi)


def save_fig(fig, dataset: str, name: str, section: str = "figures") -> Path:
    """Save ``fig`` as ``results/<dataset>/<section>/<name>.png`` (atomically, at the size it
    is shown: :func:`published_png`) and return the path."""
    path = paths.results_dir(dataset, section) / f"{name}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    with atomic_path(path) as tmp:
        tmp.write_bytes(published_png(buffer.getvalue()))
    return path
