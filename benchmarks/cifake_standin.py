"""A CIFAKE-sized stand-in, to time the whole pipeline at CIFAKE's scale without CIFAKE.

CIFAKE cannot be downloaded without network. This builds a folder in its layout
(``train|test/REAL|FAKE``, 32x32 JPEGs, 50k/10k per class by default) from the data in
``../shared/data``, so ``make all DATASET=cifake DATA_SOURCE=<folder>`` runs every notebook on
as many images as CIFAKE has:

* REAL: 32x32 tiles of the shoes dataset's real photos (two grids, 16 px apart; nearly flat
  tiles of the white studio background left out) and the 10,000 CIFAR-10 test photos;
* FAKE: the same tiles of its Midjourney images.

Every source image (a shoe photo with all its tiles, or one CIFAR-10 photo) goes to one split
only, so no picture is cut into both. Both classes are saved as JPEG at quality 95.

**Its accuracy means nothing about CIFAKE** (other pictures, another generator, tiles of
240-px images): use it for time and memory only, and in a scratch clone, because the results
land in ``results/cifake/`` and would read as CIFAKE's::

    git clone . /tmp/scale && cd /tmp/scale
    python benchmarks/cifake_standin.py /tmp/cifake_standin
    make all DATASET=cifake DATA_SOURCE=/tmp/cifake_standin
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHOES = SHARED / "sneakers"
CIFAR = SHARED / "cifar10-test-jpg.zip"
TILE = 32
MIN_STD = 8.0  # tiles flatter than this (the white studio background) are left out


def shoe_tiles(path: Path) -> list[np.ndarray]:
    """32x32 tiles of one shoe image (brought to 240x240) on two grids 16 px apart."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB").resize((240, 240), Image.Resampling.BICUBIC))
    tiles = []
    for offset in (0, TILE // 2):
        for top in range(offset, 240 - TILE + 1, TILE):
            for left in range(offset, 240 - TILE + 1, TILE):
                tile = pixels[top:top + TILE, left:left + TILE]
                if tile.std() >= MIN_STD:
                    tiles.append(tile)
    return tiles


def sources(label: str, archive: zipfile.ZipFile) -> list[tuple[str, Callable[[], list[np.ndarray]]]]:
    """``(source id, tiles)`` for every source image of a class; tiles are cut on demand."""
    folder = SHOES / ("real" if label == "REAL" else "ai-midjourney")
    found = [(f"shoe-{path.stem}", lambda p=path: shoe_tiles(p)) for path in sorted(folder.iterdir())
             if path.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    if label == "REAL":
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        found += [(f"cifar-{Path(n).parent.name}-{Path(n).stem}",  # stems repeat across classes
                   lambda n=n: [np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB"))])
                  for n in names]
    return found


def fill(label: str, archive: zipfile.ZipFile, counts: dict[str, int],
         rng: np.random.Generator) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Source images in random order: test takes whole sources until full, then train."""
    found = sources(label, archive)
    chosen: dict[str, list[tuple[str, np.ndarray]]] = {split: [] for split in counts}
    for index in rng.permutation(len(found)):
        split = next((s for s in counts if len(chosen[s]) < counts[s]), None)
        if split is None:
            break
        source_id, cut = found[index]
        tiles = cut()[: counts[split] - len(chosen[split])]
        chosen[split] += [(f"{source_id}_{k:02d}", tile) for k, tile in enumerate(tiles)]
    return chosen


def build(folder: Path, counts: dict[str, int], rng: np.random.Generator) -> None:
    """Write both classes of every split into ``folder`` and print the counts."""
    with zipfile.ZipFile(CIFAR) as archive:
        for label in ("REAL", "FAKE"):
            for split, items in fill(label, archive, counts, rng).items():
                (folder / split / label).mkdir(parents=True, exist_ok=True)
                for name, tile in items:
                    with open(folder / split / label / f"{name}.jpg", "xb") as file:  # no name twice
                        Image.fromarray(tile).save(file, format="JPEG", quality=95)
                short = "" if len(items) == counts[split] else f" (all there are; {counts[split]:,} asked)"
                print(f"{split}/{label}: {len(items):,} images{short}")
    (folder / "README.txt").write_text(__doc__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--test-per-class", type=int, default=10_000)
    parser.add_argument("--train-per-class", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    missing = [p for p in (SHOES, CIFAR) if not p.exists()]
    if missing:
        print(f"cannot build the stand-in: {', '.join(map(str, missing))} not found "
              "(the shared CI data beside the project)", file=sys.stderr)
        return 1
    if args.out.exists():
        print(f"{args.out} exists: give a new folder (nothing is overwritten)", file=sys.stderr)
        return 1
    staging = args.out.with_name(args.out.name + f".tmp{os.getpid()}")
    try:  # written beside its final name, then renamed: complete or absent
        build(staging, {"test": args.test_per_class, "train": args.train_per_class},
              np.random.default_rng(args.seed))
        os.replace(staging, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"built {args.out}: a stand-in for timing only, not CIFAKE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
