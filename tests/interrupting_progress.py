"""A progress reporter that interrupts a run the way Ctrl-C (or a signal handler) would, at a chosen point."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from cxr_tools.runtime.progress import RecordingProgress


class Interrupt(RecordingProgress):
    """Raises KeyboardInterrupt once ``after`` units were advanced on the task called ``task`` (with
    ``calls=True``: once ``advance`` was called ``after`` times, e.g. after that many chunks). With ``signum`` it
    sends that signal to this process instead, once: a real SIGTERM, which a trainer's handler turns into a stop
    at the step's end, as when a job is preempted."""

    def __init__(self, task: str, after: int, *, calls: bool = False, signum: int | None = None) -> None:
        super().__init__()
        self.name, self.after, self.calls, self.signum = task, after, calls, signum
        self.n_calls = 0
        self.sent = False

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        outer = self
        with super().task(description, total) as inner:

            class _T:
                def advance(self, n: float = 1) -> None:
                    inner.advance(n)
                    if description != outer.name:
                        return
                    outer.n_calls += 1
                    if (outer.n_calls if outer.calls else outer.done(description)) < outer.after:
                        return
                    if outer.signum is None:
                        raise KeyboardInterrupt
                    if not outer.sent:
                        outer.sent = True
                        os.kill(os.getpid(), outer.signum)

                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

            yield _T()
