"""Where a dataset's raw files come from: Kaggle (kagglehub), a local folder or archive in the
dataset's own layout, or the offline demo set. Raw data is only ever read, never changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from ..core import paths
from ..core.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, BadImageError
from ..core.repro import fingerprint_bytes
from .datasets import CLASS_NAMES, DatasetSpec, DataUnavailableError, get_spec
from .demo import MakeFakes, build_demo
from .entries import Entry, hidden, resolve_links, sampled_digest, tar_entries, walk_folder

#: A Kaggle download holding fewer than this share of the published image files is refused.
MIN_DOWNLOADED_SHARE = 0.99


def read_files(source: Path, names: set[str]) -> dict[str, bytes]:
    """The bytes of the files ``names`` (relative paths as in the cache) inside ``source``
    (a folder or archive, as :func:`iter_source` reads it); names not found are left out."""
    return {rel: read() for rel, read in iter_source(source) if rel in names}


_skip_member = hidden
#: Zip "made by" systems whose names use ``\\`` as the separator: MS-DOS/FAT (what Windows
#: PowerShell 5's Compress-Archive writes), NTFS, VFAT.
_WINDOWS_ZIP_SYSTEMS = frozenset({0, 11, 14})


def zip_member_name(member: zipfile.ZipInfo) -> str:
    """A zip member's name, read the way a folder's names are read (``os.fsdecode``).

    Names are bytes. Zip tools that set the UTF-8 flag are decoded by Python already; for
    the others Python assumes cp437, which garbles the UTF-8 names most tools store without
    the flag (``café`` becomes ``caf├⌐``). Here the stored bytes are decoded as UTF-8 and a
    byte that is not UTF-8 (a legacy code page) is kept as an escape, so a zip and the folder
    it unpacks to give the same names. A zip made on Windows with ``\\`` separators
    (``real\\img_0.png``) is read as unzip, 7-Zip and Explorer read it: ``real/img_0.png``.
    """
    name = member.filename
    if not member.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # not a name Python decoded as cp437: keep it as it is
            pass
    if member.create_system in _WINDOWS_ZIP_SYSTEMS:
        name = name.replace("\\", "/")
    return name


def iter_source(source: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield ``(relative path, read)`` for every file in a folder, zip or tar(.gz) archive.

    Names are decoded alike for every kind of source (bytes that are not UTF-8 as
    ``os.fsdecode`` escapes; :func:`helpers.core.paths.printable` shows them), every entry
    accounted for (:mod:`helpers.data.entries`: links followed, loops, dangling links and
    special files yielded with ``read.problem`` set, their ``read()`` raising
    :class:`BadImageError` with it). ``read()`` may raise
    whatever the archive's codec raises for one damaged member. A damaged archive whose
    members cannot even be listed raises :class:`DataUnavailableError`.
    """
    source = Path(source)
    if source.is_dir():
        for entry in walk_folder(source):
            yield entry.rel, _Reader(entry.problem, lambda e=entry: _read_entry(e))
    elif zipfile.is_zipfile(source):
        with _listing(source), zipfile.ZipFile(source) as archive:
            for name, member in _zip_entries(archive):
                if not _skip_member(name):
                    yield name, _Reader(member if isinstance(member, str) else None,
                                        lambda m=member: _read_zip(archive, m))
    elif source.is_file() and tarfile.is_tarfile(source):
        with _listing(source), tarfile.open(source) as archive:
            for name, member in tar_entries(archive.getmembers()):
                if not _skip_member(name):
                    yield name, _Reader(member if isinstance(member, str) else None,
                                        lambda m=member: _read_tar(archive, m))
    else:
        raise DataUnavailableError(
            f"{paths.printable(source)}: not a folder, .zip or .tar(.gz) archive. Point "
            "DATA_SOURCE at the dataset's folder or at the archive downloaded from Kaggle."
        )


class _Reader:
    """``read()`` of one entry; ``problem`` is its reason when it cannot be a file at all (a
    link loop, a dangling link, a FIFO), known without reading."""

    def __init__(self, problem: str | None, read: Callable[[], bytes]) -> None:
        self.problem, self._read = problem, read

    def __call__(self) -> bytes:
        return self._read()


def _read_entry(entry: Entry) -> bytes:
    if entry.problem:
        raise BadImageError(entry.problem)
    return _read_limited(entry.path.stat().st_size, entry.path.read_bytes)


def _zip_link(member: zipfile.ZipInfo) -> bool:
    """A symbolic link stored by a Unix zip tool (``zip -y``): its data is the target's path."""
    return member.create_system == 3 and stat.S_ISLNK(member.external_attr >> 16)


def _zip_entries(archive: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo | str]]:
    """``(path, member or reason)`` of what unzip creates, sorted: folders are not entries,
    symbolic links are followed inside the archive (:func:`helpers.data.entries.resolve_links`)."""
    members = [(zip_member_name(m), m) for m in archive.infolist()]
    files = [(name, m) for name, m in members if not name.endswith("/") and not _zip_link(m)]
    links = {name: archive.read(m)[:4096].decode("utf-8", "surrogateescape")
             for name, m in members if _zip_link(m)}
    return resolve_links(files, links)


def _read_zip(archive: zipfile.ZipFile, member: zipfile.ZipInfo | str) -> bytes:
    if isinstance(member, str):
        raise BadImageError(member)
    return _read_limited(member.file_size, lambda: archive.read(member))


def _read_tar(archive: tarfile.TarFile, member: tarfile.TarInfo | str) -> bytes:
    """A regular tar member's bytes, or the entry's reason (:func:`tar_entries`)."""
    if isinstance(member, str):
        raise BadImageError(member)
    return _read_limited(member.size, lambda: archive.extractfile(member).read())


def _read_limited(size: int, read: Callable[[], bytes]) -> bytes:
    """``read()`` unless the file is larger than an image file may be (a zip bomb, a video)."""
    if size > MAX_FILE_BYTES:
        raise BadImageError(f"too large to decode safely ({size:,} bytes; the limit is "
                            f"{MAX_FILE_BYTES:,})")
    return read()


@contextlib.contextmanager
def _listing(source: Path) -> Iterator[None]:
    """A truncated or corrupt archive whose list of files cannot be read: one clear error.
    (A damaged member is read, and reported, one file at a time.)"""
    try:
        yield
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise DataUnavailableError(
            f"{paths.printable(source)}: damaged archive, its list of files cannot be read "
            f"({type(err).__name__}: {err}). Download or copy it again, or unpack what is "
            "readable into a folder and point DATA_SOURCE at the folder.") from None


def source_fingerprint(source: Path) -> str:
    """Identity of a source's content, the key of its cache: a file replaced by another of the
    same name and size (every 32x32 BMP is 3,126 bytes) changes it; a copy moved or touched
    (same content, new times) does not.

    - folder: each entry's path and size and a digest of its content
      (:func:`helpers.data.entries.sampled_digest`: all of a file up to 192 kB, else 64 kB at
      its start, middle and end), or its reason. CIFAKE's 120,000 files extracted: 3.9 s with
      the files in the page cache (names and sizes alone took 2.0 s);
    - zip: each member's name, size and CRC-32 (stored in the archive's directory, so a
      check reads no member: CIFAKE's 120,000 in 0.9 s, as before);
    - any other file (a tar archive): its size and a digest of all its bytes (about a
      second per GB).

    Names enter as their bytes, so names that are not UTF-8 count like any other.
    """
    source = Path(source)
    if source.is_dir():
        entries = [f"{e.rel}:{e.problem}" if e.problem else
                   f"{e.rel}:{e.path.stat().st_size}:{sampled_digest(e.path, e.path.stat().st_size)}"
                   for e in walk_folder(source)]
    elif zipfile.is_zipfile(source):
        with _listing(source), zipfile.ZipFile(source) as archive:
            entries = sorted(f"{zip_member_name(m)}:{m.file_size}:{m.CRC}" for m in archive.infolist())
    elif source.is_file():
        with open(source, "rb") as file:
            digest = hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
        entries = [f"{source.name}:{source.stat().st_size}:{digest}"]
    else:
        raise DataUnavailableError(f"{paths.printable(source)}: does not exist. Check the "
                                   "DATA_SOURCE path.")
    return fingerprint_bytes("\n".join(entries).encode("utf-8", "surrogateescape"))


def classify_path(rel: str, spec: DatasetSpec) -> tuple[int | None, str | None]:
    """Label and official split of a file from the folder names on its path.

    The nearest folder named like a class decides the label; a ``train``/``test`` folder
    above it gives the split. Returns ``(None, None)`` for files outside any class folder.
    """
    folders = [p.lower() for p in PurePosixPath(rel).parts[:-1]]
    label = split = None
    for folder in reversed(folders):
        for index, name in enumerate(CLASS_NAMES):
            if label is None and folder in spec.class_folders[name]:
                label = index
        if split is None and folder in ("train", "test"):
            split = folder
    return label, split


def layout_root(rel: str, spec: DatasetSpec) -> str | None:
    """The folder that holds one copy of the dataset's layout: everything on ``rel``'s path
    above its class folder and its ``train``/``test`` folder (``""`` at the top, None outside
    any class folder). ``archive/cifake/train/REAL/1.jpg`` -> ``archive/cifake``."""
    folders = [p.lower() for p in PurePosixPath(rel).parts[:-1]]
    accepted = {name for names in spec.class_folders.values() for name in names}
    marks = [i for i, f in enumerate(folders) if f in accepted]
    if not marks:
        return None
    splits = [i for i, f in enumerate(folders) if f in ("train", "test")]
    top = min([marks[-1], *splits[-1:]])  # the class folder classify_path uses, its split
    return "/".join(PurePosixPath(rel).parts[:top])


def _kaggle_root() -> Path:
    return Path(os.environ.get("KAGGLEHUB_CACHE", Path.home() / ".cache" / "kagglehub"))


def _kaggle_cache_dir(spec: DatasetSpec) -> Path:
    return _kaggle_root() / "datasets" / spec.kaggle_handle / "versions" / str(spec.kaggle_version)


def kaggle_completion_marker(spec: DatasetSpec) -> Path:
    """The file kagglehub writes once a download of the dataset's version has finished
    (``kagglehub.cache``: ``datasets/<owner>/<name>/<version>.complete``)."""
    return _kaggle_root() / "datasets" / spec.kaggle_handle / f"{spec.kaggle_version}.complete"


def count_image_files(folder: Path) -> int:
    """Files below ``folder`` whose suffix is an image suffix (names only; nothing is read)."""
    return sum(1 for _, _, names in os.walk(folder) for name in names
               if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES)


def redownload_hint(spec: DatasetSpec) -> str:
    """The commands that download a dataset's pinned version again, replacing what is there."""
    return (f"Download it again:\n"
            f"  python -c \"import kagglehub; kagglehub.dataset_download('{spec.kaggle_ref}', "
            f"force_download=True)\"\n"
            f"(or delete {paths.printable(_kaggle_cache_dir(spec))} and run `make data "
            f"DATASET={spec.name}`), or point DATA_SOURCE at a complete local copy.")


def check_download(spec: DatasetSpec, folder: Path, marker: bool = True) -> None:
    """Refuse an unfinished Kaggle download: no completion marker (``marker``), or far fewer
    image files than the published version holds (:data:`MIN_DOWNLOADED_SHARE`).

    Raises :class:`DataUnavailableError` with the commands that download it again.
    """
    where = paths.printable(folder)
    if marker and not kaggle_completion_marker(spec).exists():
        found = count_image_files(folder)
        raise DataUnavailableError(
            f"{where}: an unfinished download of {spec.name!r} ({found:,} image files): "
            f"kagglehub writes {paths.printable(kaggle_completion_marker(spec))} when a "
            f"download completes, and it is missing. {redownload_hint(spec)}")
    if spec.expected_files:
        found = count_image_files(folder)
        if found < MIN_DOWNLOADED_SHARE * spec.expected_files:
            raise DataUnavailableError(
                f"{where}: an incomplete download of {spec.name!r}: {found:,} image files, but "
                f"version {spec.kaggle_version} has {spec.expected_files:,}. "
                f"{redownload_hint(spec)}")


def _network_reachable(host: str = "www.kaggle.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(spec: DatasetSpec, reason: str) -> str:
    """The error text for a dataset that cannot be downloaded here: what to do instead."""
    return (
        f"Cannot download {spec.name!r} from Kaggle ({spec.kaggle_ref}): {reason}.\n"
        "Either\n"
        "  1. get network access and Kaggle credentials: create an API token at\n"
        "     https://www.kaggle.com/settings/api and save it as ~/.kaggle/kaggle.json\n"
        "     (or export KAGGLE_USERNAME and KAGGLE_KEY), then run the step again; or\n"
        "  2. use a local copy: download the dataset elsewhere and point the project at the\n"
        f"     folder or archive, e.g. `make all DATASET={spec.name} DATA_SOURCE=/path/to/copy`\n"
        f"     (in a notebook: DATA_SOURCE = '/path/to/copy'); or\n"
        "  3. run the offline demo: `make all` (DATASET=demo)."
    )


def download_kaggle(spec: DatasetSpec) -> Path:
    """Download (once, into kagglehub's cache) the pinned version of a Kaggle dataset.

    A copy already in the cache is used only if kagglehub marked it finished and it holds
    the published number of images; otherwise :func:`check_download` says how to fetch it
    again. The data step never trains on half a download.
    """
    cached = _kaggle_cache_dir(spec)
    if cached.is_dir() and any(cached.iterdir()):
        check_download(spec, cached)
        return cached
    if not _network_reachable():
        raise DataUnavailableError(offline_message(spec, "www.kaggle.com is not reachable"))
    import kagglehub

    try:
        path = Path(kagglehub.dataset_download(spec.kaggle_ref))
    except Exception as err:  # kagglehub raises many kinds (HTTP, auth, consent)
        raise DataUnavailableError(offline_message(spec, f"{type(err).__name__}: {err}")) from err
    # kagglehub marks its own cache; on Kaggle or Colab it may hand out a mounted copy instead
    check_download(spec, path, marker=False)
    return path


def locate(dataset: str, source: str | os.PathLike | None = None, seed: int = 0,
           make_fakes: MakeFakes | None = None) -> Path:
    """Where the raw data of ``dataset`` is: a local copy, the demo folder (built with
    ``make_fakes`` when missing, see :func:`helpers.data.demo.build_demo`), or a download."""
    spec = get_spec(dataset)
    if source:
        path = Path(source).expanduser().resolve()  # absolute: notebooks run from notebooks/
        if not path.exists():
            raise DataUnavailableError(
                f"DATA_SOURCE={source} does not exist. Give the path of a folder or a .zip / "
                f".tar(.gz) archive in the layout of {spec.name!r}."
            )
        return path
    if spec.is_demo:

        return build_demo(make_fakes, seed=seed)
    return download_kaggle(spec)
