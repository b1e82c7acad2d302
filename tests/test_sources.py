"""Sources from the wild, second round: linked folders, tar hard links, Windows zips, and a
cache key that notices replaced content."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.data import sources
from helpers.data.cache import prepare
from helpers.data.entries import walk_folder
from tests.conftest import write_dataset


def _save(path: Path, seed: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def test_linked_class_folders_are_followed_and_every_other_entry_has_its_reason(project_dirs, tmp_path):
    """The bad-inputs example 23: class folders that are links, a link loop, plus a dangling
    link and a FIFO inside a class folder."""
    for sub in ("photos", "mj"):
        for i in range(8):
            _save(tmp_path / "store" / sub / f"{sub}_{i}.png", hash((sub, i)) % 1000)
    shoes = tmp_path / "shoes"
    (shoes / "other").mkdir(parents=True)
    os.symlink("../store/photos", shoes / "real")
    os.symlink("../store/mj", shoes / "ai-midjourney")
    os.symlink("..", shoes / "other" / "loop")
    os.symlink("gone.png", tmp_path / "store" / "mj" / "dangling.png")
    os.mkfifo(tmp_path / "store" / "photos" / "pipe.png")
    cache = prepare("sneakers", shoes, progress=False)
    assert cache.meta["n_images"] == 16 and cache.counts().loc["total", "total"] == 16
    reasons = cache.report().set_index("file")["reason"].to_dict()
    assert reasons["other/loop"] == ("symbolic link loop: it points back to the top folder, a "
                                     "folder above it, which is searched once")
    assert reasons["ai-midjourney/dangling.png"] == "broken symbolic link (its target gone.png does not exist)"
    assert reasons["real/pipe.png"] == "not a regular file (a FIFO)"


def test_walking_a_folder_gives_rglobs_order(tmp_path):
    for rel in ("b.png", "a/z.png", "a.png", "a/b/c.png", "A.png", ".hidden/x.png", "c/.DS_Store"):
        _save(tmp_path / rel, 0)
    expected = [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))  # as before
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(tmp_path).parts)]
    assert [e.rel for e in walk_folder(tmp_path)] == expected


def _shoes_with_hard_links(root: Path) -> Path:
    """The bad-inputs example 25: 4 of 10 real photos are hard links to a library folder."""
    src = root / "shoes"
    for i in range(10):
        _save(src / "ai-midjourney" / f"mj_{i}.png", 100 + i)
    for i in range(6):
        _save(src / "real" / f"photo_{i}.png", i)
    for i in range(6, 10):
        _save(src / "library" / f"photo_{i}.png", i)
        os.link(src / "library" / f"photo_{i}.png", src / "real" / f"photo_{i}.png")
    return src


def test_a_tar_gz_yields_what_tar_x_yields_hard_links_and_links_included(project_dirs, tmp_path):
    src = _shoes_with_hard_links(tmp_path)
    os.symlink("photo_0.png", src / "real" / "alias.png")  # a link to a file inside
    archive = tmp_path / "shoes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # Python's tarfile stores later paths of an
        tar.add(src, arcname="shoes")           # inode as hard-link members, as GNU tar does
    with tarfile.open(archive) as tar:
        assert sum(m.islnk() for m in tar.getmembers()) == 4 and any(m.issym() for m in tar.getmembers())
    from_tar = prepare("sneakers", archive, progress=False)
    from_folder = prepare("sneakers", src, progress=False)
    assert from_tar.counts().loc["total", "REAL"] == 11 == from_folder.counts().loc["total", "REAL"]
    assert [f.removeprefix("shoes/") for f in from_tar.files] == list(from_folder.files)
    assert from_tar.fingerprint == from_folder.fingerprint


def test_a_tar_link_to_a_folder_is_followed_and_a_loop_reported(tmp_path):
    store, top = tmp_path / "t" / "store", tmp_path / "t"
    _save(store / "a.png", 1)
    os.symlink("store", top / "linked")
    os.symlink(".", top / "store" / "loop")
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(top, arcname="t")
    entries = {}
    for name, read in sources.iter_source(archive):
        entries[name] = read.problem or len(read())
    assert entries["t/linked/a.png"] == entries["t/store/a.png"] > 0
    assert entries["t/store/loop"].startswith("symbolic link loop")


def test_a_windows_zip_with_backslashes_reads_like_the_same_zip_with_slashes(project_dirs, tmp_path):
    """The bad-inputs example 21: Compress-Archive (PowerShell 5) writes real\\img_0.png."""
    members = {}
    for cls, seed in (("real", 0), ("ai-midjourney", 50)):
        for i in range(10):
            _save(tmp_path / "png" / cls / f"img_{i}.png", seed + i)
            members[(cls, i)] = (tmp_path / "png" / cls / f"img_{i}.png").read_bytes()
    caches = {}
    for sep in ("\\", "/"):
        path = tmp_path / f"zip{ord(sep)}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            folder = zipfile.ZipInfo(f"real{sep}")  # a folder entry
            folder.create_system = 0
            archive.writestr(folder, b"")
            for (cls, i), data in members.items():
                info = zipfile.ZipInfo(f"{cls}{sep}img_{i}.png", (2024, 1, 1, 0, 0, 0))
                info.create_system = 0  # made by MS-DOS/Windows
                archive.writestr(info, data)
        caches[sep] = prepare("sneakers", path, progress=False)
    assert caches["\\"].meta["n_images"] == 20 and caches["\\"].meta["n_skipped"] == 0
    assert list(caches["\\"].files) == list(caches["/"].files)
    assert caches["\\"].fingerprint == caches["/"].fingerprint


def _bmp_set(root: Path, version: str) -> None:
    """The bad-inputs example 26: 32x32 BMPs (every one 3,126 bytes); v2 replaces the
    generated images with new pixels under the same names."""
    seed = {"v1": 12, "v2": 1200}[version]
    for cls in ("real", "ai-midjourney"):
        if version == "v2" and cls == "real":
            continue
        for i in range(8):
            _save(root / cls / f"{i}.bmp", seed + i + (100 if cls == "real" else 0), "BMP")


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_same_name_same_size_replacements_rebuild_the_cache(project_dirs, tmp_path, kind):
    root = tmp_path / "bmps"
    _bmp_set(root, "v1")
    source = root if kind == "folder" else tmp_path / "bmps.tar"

    def pack():
        if kind == "tar":
            with tarfile.open(source, "w") as tar:
                tar.add(root, arcname="bmps")
        return source

    before, first_fp = prepare("sneakers", pack(), progress=False), sources.source_fingerprint(source)
    sizes = {p.name: p.stat().st_size for p in root.rglob("*.bmp")}
    _bmp_set(root, "v2")
    assert {p.name: p.stat().st_size for p in root.rglob("*.bmp")} == sizes == {f"{i}.bmp": 3126 for i in range(8)}
    after = prepare("sneakers", pack(), progress=False)
    assert sources.source_fingerprint(source) != first_fp and after.path != before.path
    assert after.fingerprint != before.fingerprint
    fake = after.labels == 1
    assert not np.array_equal(after.images[fake], before.images[before.labels == 1])


def test_the_fingerprint_ignores_times_and_samples_large_files(tmp_path):
    root = tmp_path / "set"
    write_dataset(root, n_per_class=3, layout="shoes")
    first = sources.source_fingerprint(root)
    for path in root.rglob("*.png"):
        os.utime(path, (1_000_000, 1_000_000))  # touched, copied without -p: same content
    assert sources.source_fingerprint(root) == first
    big = root / "real" / "big.bin"
    big.write_bytes(bytes(1 << 20))
    with_big = sources.source_fingerprint(root)
    data = bytearray(big.read_bytes())
    data[-1] = 1  # its last byte changed: in the sampled tail
    big.write_bytes(bytes(data))
    assert sources.source_fingerprint(root) != with_big
    shutil.rmtree(root / "real")
    assert sources.source_fingerprint(root) != first


def test_a_zip_with_unix_links_reads_like_what_unzip_creates(tmp_path):
    """zip -y stores a link as a member whose data is the target's path: followed inside the
    archive (a file, a folder), a loop or a dangling target reported."""
    import stat

    _save(tmp_path / "a.png", 3)
    data = (tmp_path / "a.png").read_bytes()
    path = tmp_path / "links.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("store/a.png", data)
        for name, target in (("alias.png", "store/a.png"), ("linked", "store"), ("store/loop", ".."),
                             ("gone.png", "store/missing.png")):
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    found = {name: read.problem or read() for name, read in sources.iter_source(path)}
    assert found["alias.png"] == found["linked/a.png"] == found["store/a.png"] == data
    assert found["store/loop"].startswith("symbolic link loop")
    assert found["gone.png"] == "broken symbolic link (its target store/missing.png is not in the archive)"
