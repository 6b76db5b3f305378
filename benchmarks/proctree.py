"""Memory of a process tree from /proc (Linux): what the benchmarks that report a peak RSS / PSS sample.

Imported by the benchmark scripts, which run with benchmarks/ first on sys.path.
"""

from __future__ import annotations

import os


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
