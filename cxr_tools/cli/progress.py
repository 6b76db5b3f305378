"""Progress rendering: Rich bars on a terminal, plain periodic lines elsewhere (SLURM logs).

Both implement :class:`cxr_tools.runtime.progress.Progress`. The plain reporter writes one line when a task
starts, at most one every ``interval`` seconds while it runs, and one when it ends, so a log file stays
readable: no carriage returns, no colour codes.
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
        reporter = self
        state = {"done": 0.0, "total": total, "postfix": "", "last": time.monotonic()}
        start = time.monotonic()

        def line(prefix: str) -> str:
            done, tot = state["done"], state["total"]
            elapsed = time.monotonic() - start
            rate = done / elapsed if elapsed > 0 else 0.0
            parts = [f"[{description}] {prefix}"]
            if tot:
                parts.append(f"{done:g}/{tot:g} ({100.0 * done / tot:.0f}%)")
            else:
                parts.append(f"{done:g} done")
            parts.append(f"{elapsed:.0f}s elapsed")
            if tot and rate > 0 and done < tot:
                parts.append(f"~{(tot - done) / rate:.0f}s left")
            if state["postfix"]:
                parts.append(str(state["postfix"]))
            return ", ".join(parts)

        class _T:
            def advance(self, n: float = 1) -> None:
                state["done"] += n
                now = time.monotonic()
                if now - state["last"] >= reporter.interval:
                    state["last"] = now
                    reporter._write(line("progress"))

            def set_total(self, total: float | None) -> None:
                state["total"] = total

            def set_postfix(self, text: str) -> None:
                state["postfix"] = text

        self._write(f"[{description}] started" + (f", {total:g} to do" if total else ""))
        yield _T()
        self._write(line("finished"))


def make_progress(console: Console, quiet: bool = False) -> ProgressProtocol:
    """Pick the reporter: none when quiet, Rich on a terminal, plain lines otherwise."""
    if quiet:
        return NullProgress()
    if console.is_terminal and not os.environ.get("CXR_PLAIN_PROGRESS"):
        return RichProgress(console)
    return PlainProgress()
