"""Pool workers end with the command that started them, and the session check sees processes it started."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from session_processes import SESSION_VAR, leftovers, session_processes

REPO = Path(__file__).resolve().parents[2]

# A preprocess-style pool (forkserver, 2 workers) busy with long tasks; prints the pids of everything it started.
_STARTER = """
import json, os, sys, threading, time
from multiprocessing import forkserver, resource_tracker
from cxr_tools.data.decoding.pipeline import ordered_map

def children(parent):
    found = []
    for entry in os.scandir("/proc"):
        try:
            stat = open(f"/proc/{entry.name}/stat").read() if entry.name.isdigit() else ")"
            if stat.rsplit(")", 1)[1].split()[1:2] == [str(parent)]:
                found.append(int(entry.name))
        except OSError:
            pass
    return found

threading.Thread(target=lambda: next(ordered_map(time.sleep, [120] * 4, workers=2)), daemon=True).start()
deadline = time.monotonic() + 60
server, workers = None, []
while time.monotonic() < deadline:
    server = forkserver._forkserver._forkserver_pid
    workers = children(server) if server else []
    if len(workers) == 2:
        break
    time.sleep(0.1)
print(json.dumps({"forkserver": server, "tracker": resource_tracker._resource_tracker._pid, "workers": workers}))
sys.stdout.flush()
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(
    not Path("/proc").is_dir() or "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="needs Linux /proc and the forkserver start method",
)
def test_a_killed_starter_leaves_no_worker_fork_server_or_tracker(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _STARTER], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    started: list[int] = []
    try:
        about = json.loads(proc.stdout.readline())
        started = [about["forkserver"], about["tracker"], *about["workers"]]
        assert len(about["workers"]) == 2 and all(started)
        os.kill(proc.pid, signal.SIGKILL)  # no finally, no pool shutdown: what kill -9 or the OOM killer does
        proc.wait()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in started if _alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for pid in started:  # only on failure: the processes this test started, still running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_the_session_check_finds_an_orphan_by_its_token_and_ignores_other_sessions():
    token = os.environ[SESSION_VAR]
    # a process re-parented away from the session (setsid + double fork is not needed: the token is enough)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=dict(os.environ))
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, SESSION_VAR: "another-session"}
    )
    try:
        by_token = {p.pid for p in session_processes(root=-1, token=token)}  # root -1: no process descends from it
        assert ours.pid in by_token and other.pid not in by_token
        assert {p.pid for p in session_processes(root=os.getpid(), token="none")} >= {ours.pid, other.pid}
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()
    # the two are gone (the session's own fork server or tracker may be alive mid-session: the end check stops them)
    assert not {p.pid for p in leftovers(root=-1, token=token, grace=5)} & {ours.pid, other.pid}
