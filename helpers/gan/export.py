"""The GAN's images as a second generator: exported at the real images' resolution and with
their JPEG tables, so that a detector cannot tell them apart by file format.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin
from tqdm.auto import tqdm

from ..core import paths
from ..core.images import decode
from ..core.repro import environment_fingerprint, fingerprint_bytes, write_json
from ..data.datasets import get_spec
from ..data.sources import iter_source
from .train import GAN

EXPORT_FOLDER = "gan"  # data/processed/<dataset>/gan/


@dataclass
class Encoding:
    """How a group of the dataset's real images is stored: one JPEG table set, or lossless."""

    kind: str  # "jpeg" or "png"
    share: float  # fraction of the real (train) images stored this way
    n_real: int
    qtables_id: str | None = None
    qtables: dict[int, list[int]] | None = None  # as Pillow reads them (``Image.quantization``)
    subsampling: int = -1  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, -1 = unknown
    jpeg_quality: int | None = None  # IJG-equivalent estimate, for the record only
    probe_files: list[str] = field(default_factory=list)
    note: str = ""

    def describe(self) -> dict:
        out = asdict(self)
        if self.qtables is not None:
            out["qtables"] = {str(k): v for k, v in self.qtables.items()}
        return out


def real_encodings(cache, max_probe: int = 25) -> list[Encoding]:
    """The storage formats of the cache's REAL train images, read from their original files.

    The cache's ``records.csv`` gives every file's format and ``qtables_id``; for each distinct
    table set up to ``max_probe`` files are opened (headers only) to read the exact tables and
    the chroma subsampling, which the records do not hold. Non-JPEG files count as lossless.
    """


    records = cache.records()
    real = records[(records["label"] == 0) & (records["split"] == "train")]
    if real.empty:
        real = records[records["label"] == 0]
    fmt = real["format"].fillna("?").astype(str).str.upper()
    ids = real["qtables_id"].astype(object).where(fmt == "JPEG")
    groups = Counter(ids.fillna("__lossless__"))
    wanted: dict[str, list[str]] = {}
    for key in groups:
        if key != "__lossless__":
            wanted[key] = real.loc[ids == key, "file"].head(max_probe).tolist()
    found: dict[str, list[tuple[dict, int]]] = {k: [] for k in wanted}
    by_file = {f: k for k, files in wanted.items() for f in files}
    if by_file:
        source = Path(cache.meta["source"])
        if not source.exists():
            raise FileNotFoundError(
                f"{source}: the dataset's original files (cache.meta['source']) are gone, so their "
                "JPEG tables cannot be read. Point DATA_SOURCE at the dataset again (or restore "
                "the folder) and rerun.")
        for rel, read in iter_source(source):
            key = by_file.get(rel)
            if key is None:
                continue
            with Image.open(io.BytesIO(read())) as img:
                tables = {k: list(v) for k, v in img.quantization.items()}
                found[key].append((tables, JpegImagePlugin.get_sampling(img)))
    total = sum(groups.values())
    encodings = []
    for key, count in groups.most_common():
        if key == "__lossless__":
            formats = sorted(set(fmt[ids.isna()]))
            encodings.append(Encoding("png", count / total, count,
                                      note=f"real images stored as {', '.join(formats)}: exported as "
                                           "lossless PNG"))
            continue
        probes = found[key]
        if not probes:
            raise FileNotFoundError(f"none of {wanted[key][:3]} (tables {key}) was found in "
                                    f"{cache.meta['source']}; has the source changed since the cache "
                                    "was built? Rebuild it with data.prepare(..., force=True).")
        samplings = Counter(s for _, s in probes)
        subsampling = samplings.most_common(1)[0][0]
        note = "" if len(samplings) == 1 else f"mixed chroma subsampling among probes: {dict(samplings)}"
        quality = real.loc[ids == key, "jpeg_quality"].dropna()
        encodings.append(Encoding(
            "jpeg", count / total, count, qtables_id=key, qtables=probes[0][0],
            subsampling=int(subsampling), jpeg_quality=int(quality.iloc[0]) if len(quality) else None,
            probe_files=wanted[key][:len(probes)], note=note))
    return encodings


def encode_image(image: np.ndarray, encoding: Encoding) -> tuple[bytes, str]:
    """One (H, W, 3) uint8 image as file bytes in ``encoding``; returns the bytes and suffix."""
    buffer = io.BytesIO()
    img = Image.fromarray(image)
    if encoding.kind == "jpeg":
        tables = encoding.qtables or {}
        qtables = [tables[k] for k in sorted(tables)][:2]  # luma, chroma (CMYK's extra dropped)
        img.save(buffer, format="JPEG", qtables=qtables, subsampling=encoding.subsampling)
        return buffer.getvalue(), ".jpg"
    img.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def export_dir(dataset: str) -> Path:
    """``data/processed/<dataset>/gan/``: where the exported images and their manifest live."""
    return paths.processed_dir(dataset) / EXPORT_FOLDER


def export_images(gan: GAN, cache, n: int, seed: int = 0,
                  checkpoint: str | os.PathLike | None = None,
                  progress: bool = True) -> dict:
    """Generate ``n`` images and store them like the dataset's real images; return the manifest.

    Each image gets the encoding of a real image drawn at random (seeded), so the exported
    set has the real set's mix of JPEG tables, chroma subsampling and lossless files: a
    detector cannot tell the GAN's images apart by compression alone. The folder
    (:func:`export_dir`) is written beside its final name and then swapped in, so a reader
    sees the previous export or the new one, never half of one.
    """

    dataset = cache.meta["dataset"]
    encodings = real_encodings(cache)
    rng = np.random.default_rng(seed)
    choice = rng.choice(len(encodings), size=n, p=[e.share for e in encodings])
    images = gan.generate(n, seed=seed)
    target = export_dir(dataset)
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    for i in tqdm(range(n), desc="exporting", disable=not progress, mininterval=1.0):
        data, suffix = encode_image(images[i], encodings[choice[i]])
        name = f"{i:05d}{suffix}"
        (staging / name).write_bytes(data)
        files.append(name)
    used = Counter(choice.tolist())
    kinds = {encodings[i].kind for i in used}
    ckpt = Path(checkpoint) if checkpoint else None
    manifest = {
        "dataset": dataset, "count": n, "resolution": gan.config.resolution, "seed": seed,
        "generator_checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_fingerprint": fingerprint_bytes(ckpt.read_bytes()) if ckpt and ckpt.exists() else None,
        "generator_epoch": gan.epoch, "gan_config": asdict(gan.config),
        "data_fingerprint": cache.fingerprint,
        "encoding": "JPEG" if kinds == {"jpeg"} else "PNG" if kinds == {"png"} else "mixed JPEG/PNG",
        "encoding_note": ("JPEG with the quantisation tables and chroma subsampling read from the "
                          "real images' own files" if "jpeg" in kinds else "") +
                         (" / " if len(kinds) == 2 else "") +
                         ("lossless PNG: the real images are not JPEG" if "png" in kinds else ""),
        "tables": [dict(e.describe(), exported=used.get(i, 0)) for i, e in enumerate(encodings)],
        "qtables_ids": sorted({encodings[i].qtables_id for i in used if encodings[i].qtables_id}),
        "files": files,
        "file_encoding": [int(c) for c in choice],  # index into "tables", per file
        "pixels_fingerprint": fingerprint_bytes(images),
        "environment": environment_fingerprint(),
    }
    write_json(staging / "manifest.json", manifest)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return manifest


def load_manifest(dataset: str) -> dict | None:
    """The manifest of ``dataset``'s exported GAN images, or None if there is no export."""

    path = export_dir(dataset) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_exported(dataset: str, size: int | None = None) -> np.ndarray | None:
    """The exported GAN images of ``dataset`` as (N, H, W, 3) uint8, or None if none exist.

    ``size=None`` gives the pixels as decoded from the files (the GAN's resolution). With a
    ``size`` they go through the project's image rule (:func:`helpers.core.images.decode`, with the
    dataset's JPEG harmonisation), exactly as the detector's cache treats real images.
    """

    manifest = load_manifest(dataset)
    if manifest is None:
        return None
    folder = export_dir(dataset)
    out = []
    for name in manifest["files"]:
        path = folder / name
        if size is None:
            with Image.open(path) as img:
                out.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        else:
            out.append(decode(path.read_bytes(), size, str(path), get_spec(dataset).harmonise_jpeg)[0])
    if not out:
        side = size or manifest["resolution"]
        return np.zeros((0, side, side, 3), np.uint8)
    return np.stack(out)


def verify_export(dataset: str) -> dict:
    """Re-open every exported file and check it is stored as its manifest says.

    For JPEG files: the quantisation tables and the chroma subsampling must equal those read
    from the real images. Returns counts of files checked and of mismatches (with names).
    """

    manifest = load_manifest(dataset)
    if manifest is None:
        raise FileNotFoundError(f"{export_dir(dataset)}: no exported GAN images (run notebook 04)")
    folder = export_dir(dataset)
    checked, mismatched = Counter(), []
    for name, index in zip(manifest["files"], manifest["file_encoding"]):
        expected = manifest["tables"][index]
        with Image.open(folder / name) as img:
            if expected["kind"] == "jpeg":
                tables = {str(k): list(v) for k, v in img.quantization.items()}
                want = {k: v for k, v in expected["qtables"].items() if int(k) < 2}
                ok = (img.format == "JPEG" and tables == want
                      and (expected["subsampling"] < 0
                           or JpegImagePlugin.get_sampling(img) == expected["subsampling"]))
            else:
                ok = img.format == "PNG"
        checked[img.format] += 1
        if not ok:
            mismatched.append(name)
    return {"checked": dict(checked), "mismatched": len(mismatched), "mismatched_files": mismatched[:20]}
