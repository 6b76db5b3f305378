"""A progress reporter that interrupts a run the way Ctrl-C (or a signal handler) would, at a chosen point."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cxr_tools.runtime.progress import RecordingProgress


class Interrupt(RecordingProgress):
    """Raises KeyboardInterrupt once ``after`` units were advanced on the task called ``task``."""

    def __init__(self, task: str, after: int) -> None:
        super().__init__()
        self.name, self.after = task, after

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        outer = self
        with super().task(description, total) as inner:

            class _T:
                def advance(self, n: float = 1) -> None:
                    inner.advance(n)
                    if description == outer.name and outer.done(description) >= outer.after:
                        raise KeyboardInterrupt

                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

            yield _T()
