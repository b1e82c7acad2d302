"""The uint8 image cache every later step reads: decoded once under ``data/processed/<dataset>/``
with labels, file names and the train/val/test split, leakage between splits removed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core import paths
from ..core.images import IMAGE_SUFFIXES, BadImageError, decode
from ..core.repro import environment_fingerprint, fingerprint_bytes, write_json
from .datasets import CLASS_NAMES, DROPPED, SPLITS, DatasetError, DatasetSpec, get_spec
from .demo import MakeFakes
from .sources import classify_path, iter_source, layout_root, locate, source_fingerprint
from .split import assign_split, check_counts, minimum_text, remove_leakage, split_counts

CACHE_VERSION = 4  # bump whenever the decoding rule or the cache layout changes


@dataclass
class ImageCache:
    """Decoded images of one dataset at one size, with labels, names and split."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) uint8, 0 = REAL, 1 = FAKE
    split: np.ndarray  # (N,) int8, index into SPLITS, DROPPED for removed duplicates
    files: np.ndarray  # (N,) relative file names in the source
    meta: dict
    path: Path

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split (``train``, ``val`` or ``test``)."""
        mask = self.split == SPLITS.index(name)
        return self.images[mask], self.labels[mask]

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(name))

    def records(self) -> pd.DataFrame:
        """Per-file details (original size, mode, format, JPEG quality and tables, split)."""
        return pd.read_csv(self.path / "records.csv")

    def report(self) -> pd.DataFrame:
        """Skipped files and removed duplicates, each with its reason."""
        return pd.read_csv(self.path / "report.csv")

    def removed_from(self, name: str) -> np.ndarray:
        """Indices of the images taken out of split ``name`` because their pixels also occur
        in an earlier split (see :func:`remove_leakage`; kept in the cache as DROPPED)."""
        report = self.report()
        files = set(report.loc[report["reason"].str.startswith(f"removed from {name}:"), "file"])
        return np.flatnonzero((self.split == DROPPED) & np.isin(self.files, list(files)))

    def test_protocols(self) -> dict[str, np.ndarray]:
        """Indices of the test images under the two protocols, sorted.

        ``published``: every test file, as the published results count them (CIFAKE: all
        20,000 official test files); ``clean``: without the files whose decoded pixels also
        occur in train or validation (what notebook 05 reports first).
        """
        clean = self.indices("test")
        return {"published": np.sort(np.concatenate([clean, self.removed_from("test")])),
                "clean": clean}

    def counts(self) -> pd.DataFrame:
        """Images per split x class (removed duplicates as their own row)."""
        names = {**{i: s for i, s in enumerate(SPLITS)}, DROPPED: "removed (leakage)"}
        frame = pd.DataFrame({"split": [names[s] for s in self.split],
                              "class": [CLASS_NAMES[label] for label in self.labels]})
        table = pd.crosstab(frame["split"], frame["class"], margins=True, margins_name="total")
        order = [s for s in (*SPLITS, "removed (leakage)", "total") if s in table.index]
        return table.loc[order]

    @property
    def fingerprint(self) -> str:
        return self.meta["data_fingerprint"]


def cache_dir(dataset: str, source_fp: str, image_size: int, seed: int) -> Path:
    """The cache folder's name is its key: dataset, source fingerprint, size, split seed.

    The decoding rule (JPEG harmonisation) is part of the dataset's spec and of CACHE_VERSION.
    """
    jpeg = get_spec(dataset).harmonise_jpeg
    tag = f"-jpeg{jpeg}" if jpeg else ""
    return paths.processed_dir(dataset) / f"cache-v{CACHE_VERSION}-{image_size}px{tag}-{source_fp}-seed{seed}"


def find_cache(dataset: str, image_size: int | None = None, seed: int = 0) -> ImageCache | None:
    """The most recently built cache of ``dataset`` at ``image_size`` (default: the dataset's)
    and split ``seed``, whatever its source; None if there is none. For reading another
    dataset's test split without knowing where its raw copy came from."""
    size = image_size or get_spec(dataset).image_size
    found = sorted(paths.processed_dir(dataset).glob(f"cache-v{CACHE_VERSION}-{size}px*-seed{seed}/meta.json"),
                   key=lambda p: p.stat().st_mtime)
    return load_cache(found[-1].parent) if found else None


def load_cache(path: Path) -> ImageCache:
    """Load a cache folder written by :func:`build_cache`."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    arrays = {k: np.load(path / f"{k}.npy") for k in ("images", "labels", "split", "files")}
    return ImageCache(meta=meta, path=path, **arrays)


def prepare(dataset: str = "demo", source: str | os.PathLike | None = None,
            image_size: int | None = None, seed: int = 0, val_fraction: float = 0.1,
            test_fraction: float = 0.15, force: bool = False, progress: bool = True,
            make_fakes: MakeFakes | None = None) -> ImageCache:
    """Locate (or download, or build) a dataset and return its decoded cache.

    The cache is reused when one with the same key exists; ``force`` rebuilds it. The demo
    set is built on first use with ``make_fakes`` (:func:`helpers.gan.demo.demo_fakes`).
    """
    spec = get_spec(dataset)
    image_size = image_size or spec.image_size
    raw = locate(dataset, source, seed, make_fakes)
    source_fp = source_fingerprint(raw)
    target = cache_dir(dataset, source_fp, image_size, seed)
    if (target / "meta.json").exists() and not force:
        cache = load_cache(target)
        cache.meta["source"] = str(raw)  # same files (same fingerprint), maybe moved since
        check_counts(cache.meta["counts"], paths.printable(raw))
        return cache
    return build_cache(spec, raw, target, image_size, seed, val_fraction, test_fraction,
                       source_fp, progress)


@dataclass
class _Decoded:
    """What :func:`_decode_all` found: kept images with their records, skipped files, and per
    kept file its layout root and a digest of its bytes (to find a second copy)."""

    images: list[np.ndarray]
    records: pd.DataFrame
    skipped: list[tuple[str, str]]
    roots: list[str]
    digests: list[str]


def _reason(err: BadImageError, name: str) -> str:
    text = str(err)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def _decode_all(spec: DatasetSpec, raw: Path, size: int, progress: bool) -> _Decoded:
    """Decode every file of ``raw`` by the image rule; one unreadable file is one skipped row
    (file names as :func:`helpers.core.paths.printable` shows them), never a stopped step."""

    images, kept, skipped, roots, digests = [], [], [], [], []
    total = sum(1 for _ in iter_source(raw))  # lists names only; archives stay open below
    for rel, read in tqdm(iter_source(raw), total=total, desc=f"decoding {spec.name}", unit="file",
                          disable=not progress, mininterval=1.0):
        name = paths.printable(rel)
        label, split = classify_path(rel, spec)
        if getattr(read, "problem", None):  # a link loop, a dangling link, a FIFO: its reason
            skipped.append((name, read.problem))
            continue
        if label is None:
            skipped.append((name, "not inside a class folder (REAL/FAKE, real/ai-...)"))
            continue
        try:
            data = read()
        except BadImageError as err:
            skipped.append((name, str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - one damaged member: CRC, codec, encryption
            skipped.append((name, f"cannot read it from the source ({type(err).__name__}: {err})"))
            continue
        try:
            array, info = decode(data, size, name, spec.harmonise_jpeg)
        except BadImageError as err:
            reason = _reason(err, name)
            if PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
                reason = f"not an image file (suffix {PurePosixPath(name).suffix or 'none'})"
            skipped.append((name, reason))
            continue
        note = [f"re-encoded at JPEG quality {spec.harmonise_jpeg}"] if spec.harmonise_jpeg else []
        if info.mode != "RGB":
            note.append(f"converted {info.mode} to RGB")
        if (info.width, info.height) != (size, size):
            note.append(f"resized {info.width}x{info.height} to {size}x{size}")
        note.extend(info.notes)
        images.append(array)
        roots.append(paths.printable(layout_root(rel, spec) or ""))
        digests.append(fingerprint_bytes(data))
        kept.append(dict(file=name, label=label, official_split=split or "",
                         width=info.width, height=info.height, mode=info.mode,
                         format=info.format, jpeg_quality=info.jpeg_quality,
                         qtables_id=info.qtables_id, conversion="; ".join(note)))
    return _Decoded(images, pd.DataFrame(kept), skipped, roots, digests)


def find_copies(files: list[str], roots: list[str], digests: list[str]) -> dict[int, int]:
    """Files that repeat another copy of the dataset held in the same source.

    An archive that holds the dataset twice (``archive/train/...`` and a nested
    ``archive/cifake/train/...``) has two layout roots (:func:`layout_root`) whose files have
    the same path below the root and the same bytes. The root with the most files is kept
    (then the outermost); a file of another root that repeats one of it is a copy. Returns
    ``{index of the copy: index of the file kept}``; files that differ are all kept.
    """
    members: dict[str, list[int]] = {}
    for i, root in enumerate(roots):
        members.setdefault(root, []).append(i)
    if len(members) < 2:
        return {}
    seen: dict[tuple[str, str], int] = {}
    copies: dict[int, int] = {}
    for root in sorted(members, key=lambda r: (-len(members[r]), len(r), r)):
        own = {}
        for i in members[root]:
            key = (files[i][len(root) + 1:] if root else files[i], digests[i])
            if key in seen:
                copies[i] = seen[key]
            else:
                own[key] = i
        seen.update(own)
    return copies


def _drop_copies(raw: Path, decoded: _Decoded) -> _Decoded:
    """:func:`find_copies` applied: copies become skipped rows, with one warning per copy."""
    files = decoded.records["file"].tolist() if len(decoded.records) else []
    copies = find_copies(files, decoded.roots, decoded.digests)
    if not copies:
        return decoded
    pairs: dict[tuple[str, str], int] = {}
    for i, j in copies.items():
        pairs[(decoded.roots[i], decoded.roots[j])] = pairs.get((decoded.roots[i], decoded.roots[j]), 0) + 1
    for (copy, kept), n in pairs.items():
        warnings.warn(f"{paths.printable(raw)}: the dataset is in the source twice: {n:,} files "
                      f"under {copy or '.'}/ repeat those under {kept or '.'}/ (same path below "
                      "it, same bytes); only the copy under "
                      f"{kept or '.'}/ is used (the others are listed in the data report)",
                      stacklevel=3)
    keep = [i for i in range(len(files)) if i not in copies]
    skipped = decoded.skipped + [(files[i], f"second copy of the dataset: same bytes as {files[j]}")
                                 for i, j in copies.items()]
    return _Decoded([decoded.images[i] for i in keep],
                    decoded.records.iloc[keep].reset_index(drop=True), skipped,
                    [decoded.roots[i] for i in keep], [decoded.digests[i] for i in keep])


def _folder_summary(files: list[str], limit: int = 8) -> str:
    """``folder/ (count)`` of the files' folders, largest first: what a message shows."""
    counts = pd.Series([PurePosixPath(f).parent.as_posix() for f in files]).value_counts()
    shown = [f"{folder}/ ({n:,})" for folder, n in counts.head(limit).items()]
    more = f" and {len(counts) - limit} more" if len(counts) > limit else ""
    return ", ".join(shown) + more


def check_classes(spec: DatasetSpec, raw: Path, records: pd.DataFrame,
                  skipped: list[tuple[str, str]]) -> None:
    """Raise :class:`DatasetError` unless images of both classes were found, naming the
    folders found (recognised and not) and the class folder names accepted."""
    labels = set(records["label"]) if len(records) else set()
    if labels == {0, 1}:
        return
    outside = [f for f, reason in skipped if reason.startswith("not inside a class folder")
               and PurePosixPath(f).suffix.lower() in IMAGE_SUFFIXES]
    found = [f"{CLASS_NAMES[k]}: {_folder_summary(records.loc[records['label'] == k, 'file'].tolist())}"
             for k in sorted(labels)]
    accepted = "; ".join(f"{c}: {', '.join(spec.class_folders[c])}" for c in CLASS_NAMES)
    what = ("no images found inside class folders" if not labels else
            f"images of one class only ({CLASS_NAMES[labels.pop()]}); a detector needs both")
    raise DatasetError(
        f"{paths.printable(raw)}: {what}.\n"
        f"  recognised: {'; '.join(found) or 'none'}\n"
        f"  images outside any class folder: {_folder_summary(outside) if outside else 'none'}\n"
        f"Class folder names accepted (any letter case; the nearest on a file's path decides), "
        f"in the layout of {spec.name!r}: {accepted}. Rename or move the folders, or point "
        "DATA_SOURCE at a copy in the dataset's own layout.")


def build_cache(spec: DatasetSpec, raw: Path, target: Path, image_size: int, seed: int,
                val_fraction: float, test_fraction: float, source_fp: str,
                progress: bool = True) -> ImageCache:
    """Decode every image of ``raw`` once, split, de-duplicate and write the cache atomically.

    Raises :class:`DatasetError` (and writes nothing) when the source is not a usable
    dataset: fewer than two classes found, or a split left without one of them.
    """
    start = time.perf_counter()
    decoded = _drop_copies(raw, _decode_all(spec, raw, image_size, progress))
    records, skipped = decoded.records, decoded.skipped
    check_classes(spec, raw, records, skipped)
    images = np.stack(decoded.images)
    labels = records["label"].to_numpy(np.uint8)
    files = records["file"].to_numpy(str)
    has_official = spec.official_split and (records["official_split"] == "test").any()
    official = records["official_split"].to_numpy(str) if has_official else None
    try:
        split = assign_split(labels, official, seed, val_fraction, test_fraction)
    except ValueError as err:  # sklearn: too few images of a class to stratify
        counts = {"all": {c: int((labels == k).sum()) for k, c in enumerate(CLASS_NAMES)}}
        rule = minimum_text(bool(has_official)).capitalize()
        raise DatasetError(f"{paths.printable(raw)}: too few images to split into train, val "
                           f"and test ({counts['all']}; {err}). {rule}. Nothing was trained "
                           "or saved.") from None
    check_counts(split_counts(labels, split), paths.printable(raw), official=bool(has_official))
    split, leak_rows = remove_leakage(images, labels, split, files)
    check_counts(split_counts(labels, split), paths.printable(raw), official=bool(has_official),
                 removed=int((split == DROPPED).sum()))
    records["split"] = [SPLITS[s] if s >= 0 else "removed" for s in split]

    report = pd.DataFrame(
        [(f, "skipped", r) for f, r in skipped]
        + [(f, "removed" if r.startswith("removed") else "kept", r) for f, r in leak_rows]
        + [(f, "converted", c) for f, c in zip(records["file"], records["conversion"]) if c],
        columns=["file", "action", "reason"],
    )
    meta = {
        "dataset": spec.name, "title": spec.title, "is_demo": spec.is_demo,
        "source": str(raw), "source_fingerprint": source_fp, "image_size": image_size,
        "harmonise_jpeg": spec.harmonise_jpeg,
        "split_seed": seed, "val_fraction": val_fraction,
        "test_fraction": None if has_official else test_fraction,
        "official_split": bool(has_official), "cache_version": CACHE_VERSION,
        "n_images": len(labels), "n_skipped": len(skipped),
        "n_removed_leakage": int((split == DROPPED).sum()),
        "n_contradictions": sum(1 for _, r in leak_rows if ": contradiction," in r),
        "counts": split_counts(labels, split),
        "data_fingerprint": fingerprint_bytes(images, labels, split),
        "build_seconds": round(time.perf_counter() - start, 2),
        "environment": environment_fingerprint(),
    }
    _write_cache(target, images, labels, split, files, records, report, meta)
    return load_cache(target)


def _write_cache(target: Path, images, labels, split, files, records, report, meta) -> None:
    """Write into a temporary sibling folder, then rename: a cache is complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    staging.mkdir(exist_ok=True)
    for name, array in dict(images=images, labels=labels, split=split, files=files).items():
        np.save(staging / f"{name}.npy", array)
    records.to_csv(staging / "records.csv", index=False)
    report.to_csv(staging / "report.csv", index=False)
    write_json(staging / "meta.json", meta)
    if target.exists():  # a forced rebuild: swap the old cache out

        shutil.rmtree(target)
    os.replace(staging, target)


def summarise_report(cache: ImageCache) -> pd.DataFrame:
    """Counts of report rows by action and reason family (for the notebooks)."""
    report = cache.report()
    if report.empty:
        return pd.DataFrame(columns=["action", "reason", "files"])
    family = report["reason"].str.replace(r"\b(of|to|with) .*$", "", regex=True)
    return (report.assign(reason=family).groupby(["action", "reason"]).size()
            .rename("files").reset_index())
