"""The progress protocol between engines and whoever renders progress.

Engines never print. They receive a :class:`Progress` and open tasks on it::

    with progress.task("preprocess", total=len(rows)) as task:
        for row in rows:
            ...
            task.advance()

The CLI passes a Rich implementation on a terminal and a plain, periodic log-line implementation
otherwise (SLURM log files); library users and tests get :class:`NullProgress` by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Task(Protocol):
    """One unit of progress being reported."""

    def advance(self, n: float = 1) -> None:
        """Record ``n`` more units done."""

    def set_total(self, total: float | None) -> None:
        """Change the total once it becomes known."""

    def set_postfix(self, text: str) -> None:
        """Show a short status text (e.g. ``loss=0.31``) next to the bar."""


class Progress(Protocol):
    """Something that can report tasks; see the module docstring."""

    def task(self, description: str, total: float | None = None) -> contextlib.AbstractContextManager[Task]:
        """Open a task; it is finished when the context exits."""


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def set_total(self, total: float | None) -> None:
        pass

    def set_postfix(self, text: str) -> None:
        pass


class NullProgress:
    """A progress reporter that reports nothing (library use, tests)."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        yield _NullTask()


class RecordingProgress:
    """A reporter that remembers what was reported; used by tests and by callers that want totals."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float | None]] = []

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        rec = self

        class _T:
            def advance(self, n: float = 1) -> None:
                rec.events.append((description, "advance", n))

            def set_total(self, total: float | None) -> None:
                rec.events.append((description, "total", total))

            def set_postfix(self, text: str) -> None:
                rec.events.append((description, "postfix", None))

        self.events.append((description, "start", total))
        yield _T()
        self.events.append((description, "end", None))

    def done(self, description: str) -> float:
        """Units advanced on the task called ``description``."""
        return sum(n or 0 for d, kind, n in self.events if d == description and kind == "advance")


def null_progress(progress: Progress | None) -> Progress:
    """``progress`` or a :class:`NullProgress` when it is None."""
    return progress if progress is not None else NullProgress()
