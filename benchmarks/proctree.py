"""Memory of a process tree from /proc (Linux): what the benchmarks that report a peak RSS / PSS sample.

Imported by the benchmark scripts, which run with benchmarks/ first on sys.path.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in kB (``VmRSS``), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """The process's proportional set size in kB (shared pages split among their users), 0 when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of all its threads, recursively)."""
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        try:
            kids = []
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids += [int(c) for c in fh.read().split()]
        except OSError:
            continue
        out += kids
        frontier += kids
    return out


def communicate_sampled(proc: subprocess.Popen[str], interval: float = 0.02) -> tuple[str, dict[str, float]]:
    """Wait for ``proc`` while sampling its tree: its stdout and the peaks in MB of its own RSS (``main_rss_mb``),
    its largest descendant's RSS (``worker_rss_mb``) and the whole tree's PSS (``tree_pss_mb``)."""
    peak = {"main_rss_mb": 0.0, "worker_rss_mb": 0.0, "tree_pss_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            kids = descendants(proc.pid)
            peak["main_rss_mb"] = max(peak["main_rss_mb"], status_kb(proc.pid, "VmRSS") / 1024)
            if kids:
                peak["worker_rss_mb"] = max(peak["worker_rss_mb"], max(status_kb(k, "VmRSS") for k in kids) / 1024)
            peak["tree_pss_mb"] = max(peak["tree_pss_mb"], sum(pss_kb(p) for p in [proc.pid, *kids]) / 1024)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    stop.set()
    thread.join()
    return stdout, peak
