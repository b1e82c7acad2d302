"""Where a dataset's raw files come from: Kaggle (kagglehub), a local folder or archive in the
dataset's own layout, or the offline demo set. Raw data is only ever read, never changed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from ..core import paths
from ..core.images import IMAGE_SUFFIXES, MAX_FILE_BYTES, BadImageError
from ..core.repro import fingerprint_bytes
from .datasets import CLASS_NAMES, DatasetSpec, DataUnavailableError, get_spec
from .demo import MakeFakes, build_demo

#: A Kaggle download holding fewer than this share of the published image files is refused.
MIN_DOWNLOADED_SHARE = 0.99


def read_files(source: Path, names: set[str]) -> dict[str, bytes]:
    """The bytes of the files ``names`` (relative paths as in the cache) inside ``source``
    (a folder or archive, as :func:`iter_source` reads it); names not found are left out."""
    return {rel: read() for rel, read in iter_source(source) if rel in names}


def _skip_member(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def zip_member_name(member: zipfile.ZipInfo) -> str:
    """A zip member's name, read the way a folder's names are read (``os.fsdecode``).

    Names are bytes. Zip tools that set the UTF-8 flag are decoded by Python already; for
    the others Python assumes cp437, which garbles the UTF-8 names most tools store without
    the flag (``café`` becomes ``caf├⌐``). Here the stored bytes are decoded as UTF-8 and a
    byte that is not UTF-8 (a legacy code page) is kept as an escape, so a zip and the folder
    it unpacks to give the same names.
    """
    if member.flag_bits & 0x800:
        return member.filename
    try:
        raw = member.filename.encode("cp437")
    except UnicodeEncodeError:  # not a name Python decoded as cp437: keep it as it is
        return member.filename
    return raw.decode("utf-8", "surrogateescape")


def iter_source(source: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield ``(relative path, read)`` for every file in a folder, zip or tar(.gz) archive.

    Names are decoded alike for every kind of source (bytes that are not UTF-8 as
    ``os.fsdecode`` escapes; :func:`helpers.core.paths.printable` shows them). ``read()`` may raise
    whatever the archive's codec raises for one damaged member. A damaged archive whose
    members cannot even be listed raises :class:`DataUnavailableError`.
    """
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and not _skip_member(rel):
                yield rel, (lambda p=path: _read_limited(p.stat().st_size, p.read_bytes))
    elif zipfile.is_zipfile(source):
        with _listing(source), zipfile.ZipFile(source) as archive:
            members = sorted(((zip_member_name(m), m) for m in archive.infolist() if not m.is_dir()),
                             key=lambda item: item[0])
            for name, member in members:
                if not _skip_member(name):
                    yield name, (lambda m=member: _read_limited(m.file_size, lambda: archive.read(m)))
    elif source.is_file() and tarfile.is_tarfile(source):
        with _listing(source), tarfile.open(source) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:
                if not _skip_member(member.name):
                    yield member.name, (lambda m=member: _read_limited(
                        m.size, lambda: archive.extractfile(m).read()))
    else:
        raise DataUnavailableError(
            f"{paths.printable(source)}: not a folder, .zip or .tar(.gz) archive. Point "
            "DATA_SOURCE at the dataset's folder or at the archive downloaded from Kaggle."
        )


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
    """Cheap identity of a source: names and sizes of its files (no file is read).

    Names enter as their bytes, so names that are not UTF-8 count like any other.
    """
    source = Path(source)
    if source.is_dir():
        entries = sorted(
            f"{p.relative_to(source).as_posix()}:{p.stat().st_size}"
            for p in source.rglob("*") if p.is_file()
        )
    elif zipfile.is_zipfile(source):
        with _listing(source), zipfile.ZipFile(source) as archive:
            entries = sorted(f"{zip_member_name(m)}:{m.file_size}:{m.CRC}" for m in archive.infolist())
    elif source.is_file():
        stat = source.stat()
        entries = [f"{source.name}:{stat.st_size}"]
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
