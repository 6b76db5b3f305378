"""Worker processes that end with the process that started them.

A ``ProcessPoolExecutor`` worker blocks on its task queue, and it holds that queue's write end itself, so when
the command that started the pool is killed (``kill -9``, the OOM killer, a SLURM time limit) the queue never
reaches end-of-file and the worker waits forever. With the ``forkserver`` start method each worker also holds
the fork server's and the resource tracker's "alive" pipes, so those two stay as well: four orphaned
processes per killed ``cxr preprocess --workers 2``. :func:`exit_with` in a pool's ``initializer`` makes each
worker exit as soon as its starter is gone; the fork server and the tracker then see end-of-file and exit too.
"""

from __future__ import annotations

import os
import select
import threading
import time

_EXIT_CODE = 70  # EX_SOFTWARE: the worker did not finish its task; its starter is gone and nobody reads it


def exit_with(pid: int, *, poll_seconds: float = 1.0) -> None:
    """Exit this process (at once, ``os._exit``) when process ``pid`` ends; returns immediately.

    Watches ``pid`` from a daemon thread: a pidfd (Linux >= 5.3) wakes it the moment ``pid`` exits, elsewhere
    it polls every ``poll_seconds``. Call it in the worker with the starter's pid (``initargs=(os.getpid(),)``).
    """
    threading.Thread(target=_watch, args=(pid, poll_seconds), name="cxr-exit-with-starter", daemon=True).start()


def _watch(pid: int, poll_seconds: float) -> None:
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
    except ProcessLookupError:
        os._exit(_EXIT_CODE)
    except (AttributeError, OSError):  # not Linux, or a kernel / seccomp profile without pidfd_open
        while _alive(pid):
            time.sleep(poll_seconds)
        os._exit(_EXIT_CODE)
    select.select([fd], [], [])  # a pidfd becomes readable when its process exits
    os._exit(_EXIT_CODE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
