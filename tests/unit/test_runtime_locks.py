"""runtime/locks.py: one writer per output, holder named, stale locks taken over, and a file system without locks
tolerated (warned once)."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from script_modules import REPO

from cxr_tools.errors import OutputLockedError
from cxr_tools.runtime import locks
from cxr_tools.runtime.locks import LOCK_NAME, lock_file_for, lock_output, release_all, scope


def _record(path, pid: int, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "command": "cxr x", "since": "-"}))


def test_lock_is_reentrant_records_its_holder_and_goes_on_release(tmp_path):
    out = tmp_path / "run"
    first = lock_output(out)
    assert lock_output(out) is first  # the same process may lock again (a demo, then its stages)
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    release_all()
    assert not out.exists()  # created for the lock, never written: removed with it


def test_scope_releases_only_what_it_took(tmp_path):
    outer = lock_output(tmp_path / "a")
    with scope():
        lock_output(tmp_path / "a")
        lock_output(tmp_path / "b.csv", file=True)
        assert lock_file_for(tmp_path / "b.csv", file=True) == tmp_path / ".b.csv.lock"
    assert outer.fd >= 0 and (tmp_path / "a" / LOCK_NAME).is_file()
    assert not (tmp_path / ".b.csv.lock").exists()


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    _record(tmp_path / "run" / LOCK_NAME, pid)
    with caplog.at_level(logging.INFO, logger="cxr_tools"):
        lock_output(tmp_path / "run")
    assert f"left by pid {pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_without_working_file_locks_it_warns_once_and_trusts_the_record(tmp_path, monkeypatch, caplog):
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(locks, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="cxr_tools"):
        lock_output(tmp_path / "a")
        lock_output(tmp_path / "b")
    assert caplog.text.count("File locks do not work") == 1
    # A live process of this host named in the record still refuses (here: the test's parent process).
    _record(tmp_path / "c" / LOCK_NAME, os.getppid())
    with pytest.raises(OutputLockedError, match=rf"being written by pid {os.getppid()} on"):
        lock_output(tmp_path / "c")
    _record(tmp_path / "d" / LOCK_NAME, os.getppid(), host="another-node")  # cannot be checked: goes on
    lock_output(tmp_path / "d")


def test_a_lock_held_by_another_process_refuses(tmp_path):
    code = (
        "import time; from cxr_tools.runtime.locks import lock_output; "
        f"lock_output({str(tmp_path / 'run')!r}); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"pid {holder.pid} on {socket.gethostname()}") as info:
            lock_output(tmp_path / "run")
        assert "another -o" in info.value.hint
    finally:
        holder.kill()
        holder.wait()


def test_a_requeued_slurm_job_waits_for_its_previous_incarnation(tmp_path, monkeypatch):
    """After ``scontrol requeue`` SLURM may start the job again while the old process is still being killed:
    the new one waits for the lock instead of failing; another job is refused at once."""
    code = (
        "import time; from cxr_tools.runtime.locks import lock_output; "
        f"lock_output({str(tmp_path / 'run')!r}); print('held', flush=True); time.sleep(1.5)"
    )
    env = {**os.environ, "SLURM_JOB_ID": "77", "PYTHONPATH": str(REPO)}
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        env.pop(var, None)
        monkeypatch.delenv(var, raising=False)

    def hold() -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        return holder

    holder = hold()
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(OutputLockedError, match=rf"pid {holder.pid}"):
        lock_output(tmp_path / "run")
    holder.wait()
    holder = hold()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock = lock_output(tmp_path / "run")  # waits for the holder's exit, then takes the lock
    assert holder.wait() == 0
    assert json.loads(lock.path.read_text())["slurm_job"] == "77"
    release_all()
