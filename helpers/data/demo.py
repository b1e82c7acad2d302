"""The offline DEMO dataset: real photo crops vs images from a small GAN, built from nothing.

It exists so that the whole pipeline runs on a fresh machine without network. It is *not*
a benchmark: a detector separates it easily, and every report built on it says "DEMO".

* REAL: random square crops (48-192 px, shrunk to 32x32 by the project's image rule) of the
  colour photographs that ship inside scikit-image. Two photos are kept for the test split
  only, so test images never share a scene with training images.
* FAKE: a small DCGAN generator trained once on the *training* crops, whose weights ship with
  the project (:func:`helpers.gan.demo.demo_fakes`), generates the same number of images. The
  generator is passed in (``make_fakes``), so the data layer does not depend on the GAN that
  depends on it.

Both classes are stored as lossless PNG in CIFAKE's layout (``train|test/REAL|FAKE``), so
file format and compression carry no label information. The same bytes for a seed on every
machine (version 2; version 1 trained its generator at build time, and its fakes differed by
CPU kind); the build takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import paths
from ..core.accel import set_cpu_threads
from ..core.images import fit_square
from ..core.repro import seed_everything, write_json
from .datasets import DataUnavailableError

DEMO_VERSION = 2  # 2: the FAKE images come from shipped generator weights
TRAIN_PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
                "ihc.png", "retina.jpg")
TEST_PHOTOS = ("coffee.png", "motorcycle_left.png")


def _photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def photo_crops(photos: tuple[str, ...], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random square crops of the given scikit-image photos as (n, size, size, 3) uint8."""
    images = [Image.open(_photo_dir() / name).convert("RGB") for name in photos]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = images[rng.integers(len(images))]
        side = int(rng.integers(48, min(192, *img.size) + 1))
        left = int(rng.integers(0, img.width - side + 1))
        top = int(rng.integers(0, img.height - side + 1))
        crop = fit_square(img.crop((left, top, left + side, top + side)), size)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:05d}.png", optimize=False)


#: ``make_fakes(real_train, n, seed) -> (fakes, details)``: n uint8 (n, S, S, 3) images made by a
#: generator trained on ``real_train``, and what to record about it in the manifest.
MakeFakes = Callable[[np.ndarray, int, int], tuple[np.ndarray, dict]]


def build_demo(make_fakes: MakeFakes | None = None, seed: int = 0, n_train: int = 1200,
               n_test: int = 400, size: int = 32, force: bool = False) -> Path:
    """Build (once) the demo dataset under ``data/raw/demo/`` and return its folder.

    ``n_train`` and ``n_test`` are images *per class*. The folder appears complete or not at
    all (it is written beside its final name, then renamed). Raises DataUnavailableError when
    the folder is missing and no ``make_fakes`` is given.
    """
    target = paths.raw_dir("demo") / f"demo-v{DEMO_VERSION}-seed{seed}-{n_train}x{n_test}-{size}px"
    if (target / "manifest.json").exists() and not force:
        return target
    if make_fakes is None:
        raise DataUnavailableError(
            f"the demo set is not built yet ({target}); its FAKE images come from the project's "
            "GAN: build it with `make data` (notebook 01), or pass "
            "make_fakes=helpers.gan.demo.demo_fakes to helpers.data.cache.prepare")
    start = time.perf_counter()
    print(f"building the offline demo set ({n_train} + {n_test} images per class, a few seconds) "
          f"in {paths.shown(target)}")
    seed_everything(seed)
    set_cpu_threads()
    rng = np.random.default_rng(seed)
    real_train = photo_crops(TRAIN_PHOTOS, n_train, size, rng)
    real_test = photo_crops(TEST_PHOTOS, n_test, size, rng)
    fakes, generator = make_fakes(real_train, n_train + n_test, seed)

    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    _write_pngs(staging / "train" / "REAL", real_train)
    _write_pngs(staging / "test" / "REAL", real_test)
    _write_pngs(staging / "train" / "FAKE", fakes[:n_train])
    _write_pngs(staging / "test" / "FAKE", fakes[n_train:])
    (staging / "README.txt").write_text(__doc__)
    write_json(staging / "manifest.json", {
        "dataset": "demo", "version": DEMO_VERSION, "seed": seed, "size": size,
        "per_class": {"train": n_train, "test": n_test},
        "real_photos": {"train": TRAIN_PHOTOS, "test": TEST_PHOTOS},
        "gan": generator,  # no timing here: the manifest is part of the source's fingerprint
    })
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    print(f"demo set built in {time.perf_counter() - start:.1f} s")
    return target
