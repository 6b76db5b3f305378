"""Progress rendering: Rich bars on a terminal, plain periodic lines elsewhere (SLURM logs).

Both implement :class:`cxr_tools.runtime.progress.Progress`. The plain reporter writes one line when a task
starts, at most one every ``interval`` seconds while it runs, and one when it ends, so a log file stays
readable: no carriage returns, no colour codes. A task's own remaining time reads in days, hours and minutes;
a training loop adds the whole run's (``run ~2 days 5 h left``) to its postfix.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cxr_tools.runtime.estimate import format_duration
from cxr_tools.runtime.progress import NullProgress, Task
from cxr_tools.runtime.progress import Progress as ProgressProtocol


class RichProgress:
    """Rich progress bars on stderr."""

    def __init__(self, console: Console) -> None:
        self._console = console

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[postfix]}"),
            console=self._console,
        )
        with bar:
            tid = bar.add_task(description, total=total, postfix="")

            class _T:
                def advance(self, n: float = 1) -> None:
                    bar.advance(tid, n)

                def set_total(self, total: float | None) -> None:
                    bar.update(tid, total=total)

                def set_postfix(self, text: str) -> None:
                    bar.update(tid, postfix=text)

            yield _T()


class _PlainTask:
    """State of one plain-progress task; writes a line at most every ``interval`` seconds."""

    def __init__(self, reporter: PlainProgress, description: str, total: float | None) -> None:
        self.reporter = reporter
        self.description = description
        self.total = total
        self.done = 0.0
        self.postfix = ""
        self.start = time.monotonic()
        self.last = self.start

    def line(self, prefix: str) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"[{self.description}] {prefix}"]
        if self.total:
            parts.append(f"{self.done:g}/{self.total:g} ({100.0 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.done:g} done")
        parts.append(f"{elapsed:.0f}s elapsed")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"~{format_duration((self.total - self.done) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def advance(self, n: float = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.reporter.interval:
            self.last = now
            self.reporter._write(self.line("progress"))

    def set_total(self, total: float | None) -> None:
        self.total = total

    def set_postfix(self, text: str) -> None:
        self.postfix = text


class PlainProgress:
    """Periodic plain log lines, for files and pipes."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None) -> None:
        self._stream = stream
        self.interval = interval if interval is not None else float(os.environ.get("CXR_PROGRESS_INTERVAL", 30))

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        self._write(f"[{description}] started" + (f", {total:g} to do" if total else ""))
        state = _PlainTask(self, description, total)
        try:
            yield state
        except BaseException:
            self._write(state.line("stopped"))
            raise
        self._write(state.line("finished"))


def make_progress(console: Console, quiet: bool = False) -> ProgressProtocol:
    """Pick the reporter: none when quiet, Rich on a terminal, plain lines otherwise."""
    if quiet:
        return NullProgress()
    if console.is_terminal and not os.environ.get("CXR_PLAIN_PROGRESS"):
        return RichProgress(console)
    return PlainProgress()
