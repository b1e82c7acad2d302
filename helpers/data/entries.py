"""Every entry of a folder or tar archive, accounted for: the files to read, and each entry
that cannot be one with its reason, read the way the usual tools read them.

- A folder is walked as torchvision's ``ImageFolder`` walks it (``os.walk(followlinks=True)``):
  symbolic links to files and folders are followed; a link that points back to a folder
  already on its own path (a loop) is reported, not followed. Dangling links, FIFOs, sockets,
  devices, empty files and unreadable folders are entries with a reason. Names starting with
  ``.`` (``.DS_Store``, ``.git``) and ``__MACOSX`` are skipped, as before.
- A tar archive yields what ``tar -x`` yields: regular members, hard-link members (which carry
  no data of their own: tar stores later paths of one inode that way), symbolic links to a
  file or folder inside the archive (a folder's files appear under the link's path too).

Entries come sorted by path, depth first, as ``sorted(Path.rglob("*"))`` gave them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.image_cost import file_problem
from ..core.images import IMAGE_SUFFIXES, MAX_FILE_BYTES

#: Bytes of a file read for its fingerprint: all of a file up to 3 x this, else this many at
#: its start, middle and end (:func:`sampled_digest`).
SAMPLE_BYTES = 64 << 10


def hidden(rel: str) -> bool:
    """Names no tool means as data: ``.``-files and folders, macOS's ``__MACOSX``."""
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(rel).parts)


@dataclass(frozen=True)
class Entry:
    """One entry of a folder: its path relative to the folder, where it is, and the reason it
    cannot be read as a file (None for a regular file to read)."""

    rel: str
    path: Path
    problem: str | None = None


def _scan(folder: Path) -> tuple[list[os.DirEntry], str | None]:
    try:
        with os.scandir(folder) as found:
            return sorted(found, key=lambda e: e.name), None
    except OSError as err:
        return [], f"cannot list folder ({err.strerror})"


def _walk(folder: Path, prefix: str, ancestors: tuple[tuple[int, int], ...],
          names: dict[tuple[int, int], str]) -> Iterator[Entry]:
    entries, problem = _scan(folder)
    if problem:
        yield Entry(prefix.rstrip("/") or ".", folder, problem)
        return
    for item in entries:
        rel, path = prefix + item.name, Path(item.path)
        if hidden(item.name):
            continue
        try:
            st = os.stat(path)  # follows links, as ImageFolder does
        except OSError as err:
            if item.is_symlink():
                target = os.readlink(path)
                reason = ("symbolic link loop (it points to itself)" if err.errno == errno.ELOOP
                          else f"broken symbolic link (its target {target} does not exist)")
                yield Entry(rel, path, reason)
            else:
                yield Entry(rel, path, f"cannot read it ({err.strerror})")
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                above = "the top folder" if names[key] == "." else f"{names[key]}/"
                yield Entry(rel, path, f"symbolic link loop: it points back to {above}, a "
                                       "folder above it, which is searched once")
                continue
            inner = list(_walk(path, rel + "/", (*ancestors, key), {**names, key: rel}))
            if not inner and os.path.splitext(item.name)[1].lower() in IMAGE_SUFFIXES:
                inner = [Entry(rel, path, "a folder named like an image file, holding no files")]
            yield from inner
            continue
        yield Entry(rel, path, file_problem(st, MAX_FILE_BYTES))


def walk_folder(root: Path) -> Iterator[Entry]:
    """Every entry below ``root`` (see the module docstring), sorted by path."""
    root = Path(root)
    st = os.stat(root)
    yield from _walk(root, "", ((st.st_dev, st.st_ino),), {(st.st_dev, st.st_ino): "."})


def sampled_digest(path: Path, size: int) -> str:
    """A digest of a file's content: all of it up to 3 x ``SAMPLE_BYTES`` (every CIFAKE image,
    every 32x32 BMP), else ``SAMPLE_BYTES`` at its start, middle and end. Re-encoded or
    replaced images differ in their headers and in every part of their entropy-coded data."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        if size <= 3 * SAMPLE_BYTES:
            digest.update(file.read())
        else:
            for offset in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
                file.seek(offset)
                digest.update(file.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _clean(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


def resolve_links(pairs: list[tuple[str, object]], links: dict[str, str]) -> list[tuple[str, object]]:
    """``(path, member or reason)`` of an archive's files and symbolic links, as unpacking it
    would give them: ``pairs`` are ``(clean path, member)`` of its files (a name stored twice
    stays twice, as before), ``links`` map a link's path to its target as stored. A link to a file reads that file; a link to a folder gives the folder's
    files under the link's path; a link to a folder above it is a loop; others are broken."""
    files = dict(pairs)
    out: list[tuple[str, object]] = list(pairs)
    folders = {str(p) for name in (*files, *links) for p in PurePosixPath(name).parents}
    for name, stored in links.items():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), stored))
        if target in files:
            out.append((name, files[target]))
        elif target in folders and (target == "." or name.startswith(target + "/")):
            out.append((name, (f"symbolic link loop: it points back to {target}/, a folder above "
                              "it, which is read once")))
        elif target in folders:
            out += [(name + rel[len(target):], member) for rel, member in files.items()
                    if rel.startswith(target + "/")]
        else:
            out.append((name, f"broken symbolic link (its target {stored} is not in the archive)"))
    return sorted(out, key=lambda item: item[0])


def tar_entries(members: list[tarfile.TarInfo]) -> list[tuple[str, tarfile.TarInfo | str]]:
    """``(path, regular member holding its bytes, or the reason it cannot be read)`` of what
    ``tar -x`` would create from ``members``, sorted by path; folders are not entries. A hard
    link reads the member it names; symbolic links as :func:`resolve_links` follows them."""
    files = {_clean(m.name): m for m in members if m.isfile()}
    specials = [(_clean(m.name), f"not a regular file (a {'FIFO' if m.isfifo() else 'device'})")
                for m in members if m.isfifo() or m.isdev()]
    for m in members:
        if m.islnk():
            target = files.get(_clean(m.linkname))
            if target is None:
                specials.append((_clean(m.name), f"hard link to {m.linkname}, which is not in the archive"))
            else:
                files[_clean(m.name)] = target
    links = {_clean(m.name): m.linkname for m in members if m.issym()}
    return sorted(resolve_links(list(files.items()), links) + specials, key=lambda item: item[0])
