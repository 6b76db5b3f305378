"""One writer per output: an OS file lock on a lock file inside the directory being written.

Every command that writes a run, evaluation, prediction, cache or dataset locks it where it decides what to do
with it (:func:`cxr_tools.runtime.outputs.decide`), so a second
process that would write the same output - a resubmitted SLURM job, a second terminal - refuses with one line
naming the holder instead of interleaving writes.

``fcntl.flock`` does the locking, not the ``filelock`` package: the kernel drops the lock when its process dies
(``kill -9``, a node reboot), so no lock can outlive its holder, and the holder's host, pid and command are a few
lines of JSON in the same file, which a refusal quotes. ``filelock`` would add a dependency for the flock call
alone and still need the holder record. A lock file whose recorded process is gone is simply taken over (and
logged). On file systems without working locks (``ENOLCK`` / ``EOPNOTSUPP``, some NFS mounts) the tool warns
once and relies on the record alone: a live process of this host named there still refuses.

Locks are per process and re-entrant (a demo locks its work directory, then each stage its own output); the CLI
releases them when the command ends (``handle_errors``; :func:`scope`), which also removes the lock file, so a
finished output holds nothing extra. The lock file is hidden (``.cxr.lock``) and ignored by the output checks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr_tools.errors import OutputLockedError

log = logging.getLogger(__name__)

LOCK_NAME = ".cxr.lock"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
#: How long a requeued SLURM job waits for its previous incarnation (still being killed by SLURM after
#: ``scontrol requeue``) to let go of the lock: SLURM's KillWait (30 s by default) plus srun's grace period.
REQUEUE_WAIT_SECONDS = 180.0
_held: dict[Path, OutputLock] = {}
_warned: list[bool] = []


class OutputLock:
    """A held lock: its file, descriptor and whether it created the directory it guards."""

    def __init__(self, path: Path, fd: int, created_dir: Path | None, output: Path | None = None) -> None:
        self.path, self.fd, self.created_dir = path, fd, created_dir
        self.output = output if output is not None else path.parent

    def release(self) -> None:
        """Remove the lock file (only if it is still ours), then drop the lock; an empty directory this lock
        created for an output that never got written goes too."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1
        from cxr_tools.runtime.outputs import release

        if self.path.name == LOCK_NAME:
            release(self.path.parent)  # the claim on the output folder ends with its lock
        if self.created_dir is not None:
            with contextlib.suppress(OSError):
                self.created_dir.rmdir()  # only when empty


def lock_file_for(output: str | os.PathLike[str], *, file: bool = False) -> Path:
    """The lock file of a directory output (inside it) or of a file output (a hidden sibling)."""
    out = Path(output).expanduser().resolve()
    return out.parent / f".{out.name}.lock" if file else out / LOCK_NAME


def lock_output(output: str | os.PathLike[str], *, file: bool = False) -> OutputLock:
    """Lock ``output`` for this process (creating the directory if needed) until :func:`release_all`.

    Raises:
        OutputLockedError: another live process holds it; the message names its host, pid and command.
    """
    lock_path = lock_file_for(output, file=file)
    held = _held.get(lock_path)
    if held is not None and held.fd >= 0:
        return held
    directory = lock_path.parent
    created = None if directory.exists() else directory
    directory.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if _flock(fd, lock_path):
                # The holder may have removed the file between our open and our lock: lock the file on disk.
                try:
                    same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            else:
                holder = _read_holder(fd)
                if holder and _alive_here(holder) and int(holder.get("pid", -1)) != os.getpid():
                    raise _locked(output, holder)
            _take_over(fd, output)
        except BaseException:
            os.close(fd)
            if created is not None:  # leave no trace of an output that never started (a full disk, a refusal)
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
                    created.rmdir()
            raise
        break
    lock = OutputLock(lock_path, fd, created, Path(output).expanduser().resolve())
    _held[lock_path] = lock
    return lock


def is_held(output: str | os.PathLike[str], *, file: bool = False) -> bool:
    """Whether a live process holds the lock of ``output`` now (this one included), without taking it.

    What tells a run listed ``running`` whose process was killed with ``kill -9`` (its lock dropped by the kernel,
    its run.json never updated) from one still writing. A probe with a shared lock, dropped at once; on a file
    system without locks the holder record decides (a process of another host counts as alive: it cannot be
    checked from here).
    """
    import fcntl

    lock_path = lock_file_for(output, file=file)
    held = _held.get(lock_path)
    if held is not None and held.fd >= 0:
        return True
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # a command releases its lock by removing the file; none means nobody holds it
    except OSError:
        return True  # cannot tell: never call a live writer gone
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the kernel's word, not the record's (pid reuse)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                return True
            holder = _read_holder(fd)
            return bool(holder) and (holder.get("host") != socket.gethostname() or _alive_here(holder))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def held_outputs() -> list[Path]:
    """The outputs this process holds locked, in the order it locked them (the last is the most specific: a demo
    locks its work folder, then each stage its own output): what a full disk's message names."""
    return [lock.output for lock in _held.values() if lock.fd >= 0]


def release_all() -> None:
    """Release every lock this process holds (end of a command)."""
    for path in list(_held):
        _held.pop(path).release()


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Release, on exit, the locks taken inside (those already held before stay held): a command, or a library
    function that must leave nothing behind when called on its own."""
    before = set(_held)
    try:
        yield
    finally:
        for path in [p for p in _held if p not in before]:
            _held.pop(path).release()


def _flock(fd: int, lock_path: Path) -> bool:
    """Take the OS lock; False when the file system has none (warned once). Raises when another holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        holder = _read_holder(fd)
        if not (_same_slurm_job(holder) and _wait_for(fd, holder)):
            raise _locked(lock_path.parent, holder) from None
        return True
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        if not _warned:
            _warned.append(True)
            log.warning(
                "File locks do not work on the file system of %s (%s); going on without them: do not start two "
                "commands writing the same output on different hosts.",
                lock_path.parent,
                exc.strerror,
            )
        return False


def _slurm_job() -> str | None:
    """This process's SLURM job (``JOB`` or ``ARRAYJOB_TASK``), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _same_slurm_job(holder: dict[str, Any]) -> bool:
    """Whether the holder is an earlier incarnation of this (requeued) SLURM job on this host."""
    job = _slurm_job()
    return bool(job) and holder.get("slurm_job") == job and int(holder.get("pid", -1)) != os.getpid()


def _wait_for(fd: int, holder: dict[str, Any]) -> bool:
    """Wait (up to :data:`REQUEUE_WAIT_SECONDS`) for the holder to exit; True once the lock is ours."""
    import fcntl

    log.info("Waiting for pid %s, this SLURM job before its requeue, to finish exiting.", holder.get("pid"))
    deadline = time.monotonic() + REQUEUE_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            continue
    return False


def _take_over(fd: int, output: str | os.PathLike[str]) -> None:
    previous = _read_holder(fd)
    if previous and int(previous.get("pid", -1)) != os.getpid():
        log.info(
            "Taking over the lock of %s left by pid %s on %s (%s), which is no longer running.",
            output,
            previous.get("pid"),
            previous.get("host"),
            previous.get("command"),
        )
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": " ".join(sys.argv),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job": _slurm_job(),
    }
    os.ftruncate(fd, 0)
    try:
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
    except OSError as exc:
        from cxr_tools.runtime.space import is_no_space, no_space_error

        if is_no_space(exc):
            raise no_space_error(output) from exc
        raise
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 65536, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is a live process of this host (one of another host cannot be checked)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    return True


def _locked(output: str | os.PathLike[str], holder: dict[str, Any]) -> OutputLockedError:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, since {holder.get('since')})"
        if holder
        else "another process"
    )
    return OutputLockedError(
        f"{output} is being written by {who}.",
        "Wait for that command to finish or stop it, or choose another -o.",
    )
