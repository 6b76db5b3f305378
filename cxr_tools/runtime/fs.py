"""Atomic writes and the one output policy of every command that writes.

A reader must never see a half-written file under its final name: every write goes to a temporary name in
the same directory, is fsynced, then renamed over the target (rename is atomic on POSIX within one file
system).

Output policy (:func:`output_plan`, docs/design.md "Overwrite and resume"): the output is locked for the
command (runtime/locks.py); a complete output is replaced only with ``--overwrite``; a non-empty directory
that is not this command's output is always refused, ``--overwrite`` or not; an incomplete output of this
command is resumed with ``--resume``, else restarted where the
command allows it (``restart=True``) or with ``--overwrite``, else refused with a hint naming both flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from cxr_tools.errors import OutputExistsError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    The caller writes the temporary file however it likes (h5py, np.save, matplotlib...). On an exception
    the temporary file is removed and ``target`` is left untouched; a full disk becomes
    :class:`~cxr_tools.errors.NoSpaceError` naming the folder (runtime/space.py).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
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


OutputPlan = Literal["new", "replace", "resume"]


def output_plan(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    resume: bool = False,
    complete: Callable[[Path], bool] | None = None,
    owned: Callable[[Path], bool] | None = None,
    restart: bool = False,
    what: str = "output",
    file: bool = False,
    swapped: bool = False,
) -> OutputPlan:
    """Lock the output ``path`` for this process (runtime/locks.py) and decide what the command does with it
    (module docstring); nothing is deleted here.

    Args:
        complete: whether an existing directory is a finished output (a file output is complete when it exists,
            because it only ever appears by an atomic rename).
        owned: whether a non-empty directory is this command's own output (its manifest, run.json, its own
            files...). A directory it does not recognise is refused even with ``overwrite``: nothing the tool
            did not write is ever deleted (``-o . --overwrite``). None: no existing content is recognised.
        restart: an incomplete output not resumed is started again without ``--overwrite``.
        what: the output's name in messages (``cache``, ``evaluation``...).
        file: ``path`` is a file, not a directory.
        swapped: the directory is replaced whole by a rename when finished, so its lock lies beside it.

    Returns:
        ``new`` (missing or empty), ``replace`` (remove it first: :func:`apply_output_plan`) or ``resume``.

    Raises:
        OutputExistsError: the output must not be touched without another flag; the hint names it.
        OutputLockedError: another live process is writing it.
    """
    from cxr_tools.runtime.locks import lock_output

    path = Path(path)
    if file:
        if path.is_dir():
            raise OutputExistsError(f"Output {path} is a directory.", "Pass a file name with -o.")
        lock_output(path, file=True)
        if not path.exists():
            return "new"
        if owned is not None and not owned(path):
            raise OutputExistsError(
                f"{path} is not a cxr {what}.", f"Choose another -o (--overwrite replaces only a cxr {what})."
            )
        if overwrite:
            return "replace"
        raise OutputExistsError(f"Output {path} already exists.", "Pass --overwrite to replace it, or another -o.")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory.", "Choose another -o path.")
    lock_output(path, file=swapped)
    if not path.exists() or not _contents(path):
        return "new"
    if owned is None or not owned(path):
        held = ", ".join(sorted(p.name for p in _contents(path) if not p.name.startswith("."))[:5])
        raise OutputExistsError(
            f"{path} is not a cxr {what} (it holds {held or 'hidden files'}).",
            f"Choose another -o directory (--overwrite replaces only a {what}, never other files).",
        )
    if complete is not None and complete(path):
        if overwrite:
            return "replace"
        raise OutputExistsError(
            f"{what.capitalize()} {path} is already complete.",
            "Pass --overwrite to replace it, or choose another -o directory.",
        )
    if resume:
        return "resume"
    if overwrite or restart:
        return "replace"
    raise OutputExistsError(
        f"{what.capitalize()} {path} is incomplete (an interrupted run?).",
        "Pass --resume to continue it, or --overwrite to start again.",
    )


def _contents(path: Path) -> list[Path]:
    """What a directory holds, its lock file aside."""
    from cxr_tools.runtime.locks import LOCK_NAME

    return [p for p in path.iterdir() if p.name != LOCK_NAME]


def clear_dir(path: str | os.PathLike[str]) -> None:
    """Delete what directory ``path`` holds, except its lock file (the lock stays held while it is replaced)."""
    for child in _contents(Path(path)):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def apply_output_plan(path: str | os.PathLike[str], plan: OutputPlan) -> Path:
    """Carry out :func:`output_plan`'s decision for a directory: empty it on ``replace``; make sure it exists."""
    path = Path(path)
    if plan == "replace" and path.exists():
        clear_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_output_dir(
    path: str | os.PathLike[str], *, overwrite: bool, owned: Callable[[Path], bool] | None = None, what: str = "output"
) -> Path:
    """An empty output directory for a command that cannot resume: its own earlier output (``owned``) needs
    ``overwrite``; anything else is refused (without ``owned``, any content)."""
    return apply_output_plan(path, output_plan(path, overwrite=overwrite, owned=owned, what=what))


def only_files(names: Iterable[str]) -> Callable[[Path], bool]:
    """An ``owned`` test for :func:`output_plan`: the directory holds only ``names`` (and hidden files)."""
    allowed = set(names)
    return lambda path: all(p.name in allowed or p.name.startswith(".") for p in path.iterdir())


def complete_lines(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an append-only log up to its last newline; a last line cut mid-write (``kill -9``) is also
    cut off the file, so the next append starts on a clean line."""
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return complete
