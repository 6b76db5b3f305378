"""Which processes a test session started are still alive (the suite's end-of-session check, conftest.py).

A process counts as the session's when it descends from the pytest process, or when its environment carries
the session's token (``SESSION_VAR``, set by conftest before any test runs and inherited by everything the
tests start): a worker whose parent was killed is re-parented to init and no longer descends from pytest,
which is exactly the leak to catch. Not counted: processes of other users or other sessions (another token),
zombies (they are dead; their parent reaps them), daemons started before the session (the SLURM cluster
never carries the token), and SLURM job processes, whose lifetime is the cluster's (epilogs, requeued
incarnations; the slurm tests check their jobs' end states themselves). Reads ``/proc``: Linux only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

SESSION_VAR = "CXR_TEST_SESSION"
PROC = Path("/proc")


@dataclass(frozen=True)
class Leftover:
    """One live process of the session: its pid, parent pid and command line (for the failure message)."""

    pid: int
    ppid: int
    cmd: str

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}): {self.cmd[:200]}"


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` from /proc/PID/stat, None once the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1])


def _environ(pid: int) -> list[bytes]:
    try:
        return (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's process
        return []


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def session_processes(root: int, token: str) -> list[Leftover]:
    """Live processes that descend from ``root``, or carry ``SESSION_VAR=token`` and are not another SLURM job's."""
    if not PROC.is_dir():
        return []
    table: dict[int, tuple[str, int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    marker = f"{SESSION_VAR}={token}".encode()
    own_job = f"SLURM_JOB_ID={os.environ.get('SLURM_JOB_ID', '')}".encode()  # a session run inside a job
    found = []
    for pid, (state, ppid) in table.items():
        if pid == root or state in ("Z", "X"):
            continue
        ancestor, seen = ppid, set()
        while ancestor not in (0, 1, root) and ancestor in table and ancestor not in seen:
            seen.add(ancestor)
            ancestor = table[ancestor][1]
        if ancestor != root:
            environ = _environ(pid)
            if marker not in environ or any(v.startswith(b"SLURM_JOB_ID=") and v != own_job for v in environ):
                continue
        found.append(Leftover(pid, ppid, _cmdline(pid)))
    return sorted(found, key=lambda p: p.pid)


def leftovers(root: int, token: str, grace: float = 10.0) -> list[Leftover]:
    """:func:`session_processes`, waiting up to ``grace`` seconds for the ones that are exiting to be gone."""
    deadline = time.monotonic() + grace
    while True:
        left = session_processes(root, token)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def stop_own_multiprocessing_helpers() -> None:
    """Stop the fork server and resource tracker this process started (an in-process ``preprocess`` with
    workers starts them). They would end with the process anyway; stopping them first lets the check ask for
    *no* live child. ``_stop`` is the method CPython's own tests use; absent, the helpers are left alone."""
    from multiprocessing import forkserver, resource_tracker

    for helper in (getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)):
        stop = getattr(helper, "_stop", None)
        if stop is not None:
            stop()


def new_token() -> str:
    """A token unique to this session (pid and random bits: concurrent sessions on one machine differ)."""
    return f"{os.getpid()}-{os.urandom(4).hex()}"
