"""Atomic writes.

A reader must never see a half-written file under its final name: every write goes to a temporary name in
the same directory, is fsynced, then renamed over the target (rename is atomic on POSIX within one file
system). A write below an output folder this process claimed is recorded in that folder's marker first
(:func:`cxr_tools.runtime.outputs.record`), so ``--overwrite`` later removes exactly what cxr wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr_tools.runtime.outputs import record


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    The caller writes the temporary file however it likes (h5py, np.save, matplotlib...). On an exception
    the temporary file is removed and ``target`` is left untouched; a full disk becomes
    :class:`~cxr_tools.errors.NoSpaceError` naming the folder (runtime/space.py).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    record(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    # mkstemp creates 0600 files; give the result the permissions an ordinary open() would (umask), so
    # colleagues sharing a cluster directory can read caches and runs.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except (OSError, RuntimeError) as exc:
        from cxr_tools.runtime.space import is_no_space, no_space_error

        if is_no_space(exc, target.parent):  # asked before the temporary file goes and frees its space
            raise no_space_error(target.parent) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the path."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically and return the path."""
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: some filesystems refuse a directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def complete_lines(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an append-only log up to its last newline; a last line cut mid-write (``kill -9``) is also
    cut off the file, so the next append starts on a clean line."""
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return complete


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (metadata CSVs, cache indexes, model weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
