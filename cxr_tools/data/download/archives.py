"""Safe extraction of tar (plain, gzip, bzip2, xz) and zip archives.

Downloaded archives are untrusted input. Every member is checked before a byte of it is written: relative path,
no ``..`` component, no absolute path or drive letter, and a regular file or directory only (symlinks, hard
links, device files and FIFOs are refused). A bad member raises :class:`DownloadError` naming it.

Extraction goes into a fresh temporary directory next to the destination; only when the whole archive has been
read is the tree moved into place, file by file with :func:`os.replace`, and the caller then writes its
completion marker. An extraction cut short (crash, ``kill -9``, a bad member) therefore leaves no marker and is
never taken for complete; the next run removes the stale temporary directory and extracts again.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from cxr_tools.errors import DownloadError, InputError
from cxr_tools.runtime.progress import Progress, Task, null_progress

CHUNK = 1 << 20
TMP_PREFIX = ".extract-"


@dataclass(frozen=True)
class Extracted:
    """Files written by an extraction, relative to the destination (POSIX separators), and their bytes."""

    files: tuple[str, ...]
    bytes: int


def archive_kind(path: Path) -> str:
    """``"zip"`` or ``"tar"`` from the file's magic bytes (not its name: signed URLs carry no usable name)."""
    if not path.is_file():
        raise InputError(f"Archive {path} does not exist.", "Check the path.")
    with open(path, "rb") as fh:
        head = fh.read(262 + 8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    raise InputError(
        f"{path} is neither a zip nor a tar archive (first bytes {head[:8]!r}).",
        "An HTML page instead of an archive usually means an expired or wrong download link.",
    )


def safe_member_path(name: str, archive: Path) -> PurePosixPath | None:
    """The checked relative path of member ``name``; None for the archive root (``./``).

    Raises:
        DownloadError: absolute path, drive letter, ``..`` component or NUL byte.
    """
    if "\x00" in name:
        raise _unsafe(archive, name, "contains a NUL byte")
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        raise _unsafe(archive, name, "is an absolute path")
    parts = [p for p in PurePosixPath(normal).parts if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, name, "escapes the destination with '..'")
    return PurePosixPath(*parts) if parts else None


def _unsafe(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(
        f"Refusing to extract {archive.name}: member {member!r} {why}.",
        "The archive is not the expected dataset archive or has been tampered with; nothing was installed.",
    )


def extract(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    description: str | None = None,
    check: Callable[[Path, tuple[str, ...]], None] | None = None,
) -> Extracted:
    """Safely extract ``archive`` into ``dest`` (created if needed) and return what was written.

    Args:
        archive: tar(.gz/.bz2/.xz) or zip file.
        dest: directory the members' relative paths are resolved against.
        progress: one task counting the archive's bytes read.
        description: the task's name (default ``extract NAME``).
        check: optional callable ``check(tmp_root: Path, files: tuple[str, ...])`` run on the extracted tree
            before it is moved into ``dest``; raise to refuse the archive (nothing is installed then).
    """
    archive = Path(archive)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kind = archive_kind(archive)
    progress = null_progress(progress)
    clean_stale(dest, archive.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{archive.name}-", dir=dest))
    try:
        with progress.task(description or f"extract {archive.name}", total=archive.stat().st_size) as task:
            if kind == "zip":
                files, size = _extract_zip(archive, tmp, task)
            else:
                files, size = _extract_tar(archive, tmp, task)
        if check is not None:
            check(tmp, files)
        _install(tmp, dest, files)
        return Extracted(files, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_stale(dest: Path, archive_name: str) -> None:
    """Remove temporary directories left by an interrupted extraction of ``archive_name``."""
    if dest.is_dir():
        for entry in dest.glob(f"{TMP_PREFIX}{archive_name}-*"):
            shutil.rmtree(entry, ignore_errors=True)


class _CountingReader:
    """A read-only file wrapper that reports bytes read to a progress task."""

    def __init__(self, fh: IO[bytes], task: Task) -> None:
        self._fh = fh
        self._task = task

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        if data:
            self._task.advance(len(data))
        return data


def _extract_tar(archive: Path, tmp: Path, task: Task) -> tuple[tuple[str, ...], int]:
    files: list[str] = []
    total = 0
    try:
        with open(archive, "rb") as raw:
            reader = _CountingReader(raw, task)
            # Stream mode ("r|*") reads a multi-GB .tar.gz once, front to back, without seeking.
            with tarfile.open(fileobj=reader, mode="r|*") as tf:  # type: ignore[call-overload]
                for member in tf:
                    rel = safe_member_path(member.name, archive)
                    if member.issym() or member.islnk():
                        raise _unsafe(archive, member.name, f"is a link (to {member.linkname!r})")
                    if not (member.isfile() or member.isdir()):
                        raise _unsafe(archive, member.name, "is a device file, FIFO or other special file")
                    if rel is None or member.isdir():
                        continue
                    src = tf.extractfile(member)
                    if src is None:  # pragma: no cover - isfile() members always have data
                        continue
                    total += _write_member(src, tmp, rel, archive, member.name)
                    files.append(rel.as_posix())
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _damaged(archive, exc) from None
    return tuple(files), total


def _extract_zip(archive: Path, tmp: Path, task: Task) -> tuple[tuple[str, ...], int]:
    files: list[str] = []
    total = counted = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check every name first: a zip has a central directory
                rel = safe_member_path(info.filename, archive)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix file type
                if kind == stat.S_IFLNK:
                    raise _unsafe(archive, info.filename, "is a symbolic link")
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise _unsafe(archive, info.filename, "is a device file, FIFO or other special file")
                del rel
            for info in infos:
                rel = safe_member_path(info.filename, archive)
                if rel is None or info.is_dir():
                    continue
                with zf.open(info) as src:
                    total += _write_member(src, tmp, rel, archive, info.filename)
                files.append(rel.as_posix())
                task.advance(info.compress_size)
                counted += info.compress_size
            task.advance(archive.stat().st_size - counted)  # headers and central directory
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise _damaged(archive, exc) from None
    return tuple(files), total


def _write_member(src: IO[bytes], tmp: Path, rel: PurePosixPath, archive: Path, name: str) -> int:
    out = tmp.joinpath(*rel.parts)
    if out.is_dir():
        raise _unsafe(archive, name, "is both a file and a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out, "wb") as fh:
        while block := src.read(CHUNK):
            fh.write(block)
            written += len(block)
    return written


def _install(tmp: Path, dest: Path, files: tuple[str, ...]) -> None:
    """Move the extracted files into ``dest`` (same file system, so each move is an atomic rename)."""
    for rel in files:
        src = tmp / rel
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise DownloadError(f"Cannot install {rel}: a directory of that name exists in {dest}.")
        os.replace(src, out)


def iter_missing(dest: Path, files: tuple[str, ...] | list[str]) -> Iterator[str]:
    """The files of an earlier extraction that are no longer under ``dest``."""
    for rel in files:
        if not (dest / rel).is_file():
            yield rel


def _damaged(archive: Path, exc: BaseException) -> DownloadError:
    return DownloadError(
        f"{archive.name} is damaged or truncated ({exc}).", "Delete it and download again (rerun with --overwrite)."
    )
