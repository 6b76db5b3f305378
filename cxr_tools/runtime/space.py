"""A full disk is one line, never a crash or a half-written file: telling "no space left" from other write errors.

Writes fail on a full disk (or an exhausted quota) in three guises: an ``OSError`` with ``errno`` ENOSPC / EDQUOT
(Python's own files, ``os.write``), an ``OSError`` or ``RuntimeError`` whose text quotes HDF5's "errno = 28", and
a bare ``RuntimeError`` from ``torch.save`` ("unexpected pos 576 vs 534"), which says nothing about the cause.
:func:`is_no_space` recognises the first two from the error and the third from the file system: a write error on
a device with (almost) nothing free is a full disk. Every write that matters goes through
:func:`cxr_tools.runtime.fs.atomic_path` (the target keeps its previous, complete content) or an append-only
journal (a torn last line is ignored on reading), so what a command wrote before the disk filled stays usable
and a rerun, once space is freed, finishes the job.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from cxr_tools.errors import NoSpaceError

_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122")
#: Below this many free bytes a write error without a cause of its own is taken for a full disk.
NEARLY_FULL_BYTES = 1 << 20
DEFAULT_HINT = "Free some space there (or choose another output), then rerun the same command: it carries on."


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write on the file system of ``path`` (its nearest existing parent); None when
    unknown. Root may use the blocks reserved for it, so for root it is the free count, else the available one."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return int(blocks) * int(st.f_frsize)


def is_no_space(exc: BaseException, path: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``exc`` is a write failing for want of space (module docstring); ``path``: where the write went,
    consulted only for errors that do not say why they failed."""
    if isinstance(exc, NoSpaceError):
        return True
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    text = str(exc)
    if any(needle in text for needle in _NO_SPACE_TEXT):
        return True
    if path is None:
        return False
    free = free_bytes(path)
    return free is not None and free < NEARLY_FULL_BYTES


def no_space_error(where: str | os.PathLike[str], hint: str | None = None) -> NoSpaceError:
    """The one-line error of a full disk at ``where`` (a folder or file the command writes)."""
    return NoSpaceError(f"No space left on {where}.", hint or DEFAULT_HINT)


@contextlib.contextmanager
def no_space_as_error(where: str | os.PathLike[str], hint: str | None = None) -> Iterator[None]:
    """Turn a full-disk failure inside the block into :func:`no_space_error` (``where``, ``hint``); other errors pass.

    A :class:`NoSpaceError` raised deeper (by an atomic write) is re-raised with this block's ``hint``, the caller's
    knowledge of how the command resumes, and ``where`` unless its message already names it.
    """
    try:
        yield
    except (OSError, RuntimeError, NoSpaceError) as exc:
        if not is_no_space(exc):  # by errno or text: the free-space test is for a write's own error (atomic_path)
            raise
        if isinstance(exc, NoSpaceError) and str(where) in exc.message:  # already names it, maybe with sizes
            raise NoSpaceError(exc.message, hint or exc.hint) from exc
        raise no_space_error(where, hint) from exc


def check_room(where: str | os.PathLike[str], needed: int, hint: str | None = None) -> None:
    """Refuse, before writing, what cannot fit: ``needed`` bytes at ``where`` (skipped when the free space is
    unknown). Used where a failed write itself would do harm (HDF5 metadata: module cxr_tools.data.caches.format)."""
    free = free_bytes(where)
    if free is not None and free < needed:
        raise NoSpaceError(
            f"No space left on {where} ({free / 2**20:.1f} MiB free, about {needed / 2**20:.1f} MiB needed).",
            hint or DEFAULT_HINT,
        )
