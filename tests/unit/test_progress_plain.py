"""Plain progress lines for SLURM logs: no carriage returns, periodic, with a final line."""

from __future__ import annotations

import io

from cxr_tools.cli.progress import PlainProgress
from cxr_tools.runtime.progress import RecordingProgress


def test_plain_progress_lines_are_log_friendly():
    stream = io.StringIO()
    progress = PlainProgress(stream=stream, interval=0.0)
    with progress.task("preprocess", total=4) as task:
        for _ in range(4):
            task.advance()
        task.set_postfix("rejected=1")
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.strip().splitlines()
    assert lines[0] == "[preprocess] started, 4 to do"
    assert lines[-1].startswith("[preprocess] finished, 4/4 (100%)")
    assert "rejected=1" in lines[-1]
    assert len(lines) == 6  # start, 4 periodic, end


def test_plain_progress_is_quiet_between_intervals():
    stream = io.StringIO()
    with PlainProgress(stream=stream, interval=3600).task("x", total=None) as task:
        for _ in range(1000):
            task.advance()
    assert len(stream.getvalue().strip().splitlines()) == 2


def test_recording_progress_counts():
    rec = RecordingProgress()
    with rec.task("a", total=3) as t:
        t.advance(2)
        t.advance()
    assert rec.done("a") == 3


def test_plain_progress_reports_a_stopped_task():
    import pytest

    stream = io.StringIO()
    with pytest.raises(RuntimeError), PlainProgress(stream=stream, interval=3600).task("fetch", total=10) as task:
        task.advance(3)
        raise RuntimeError("network down")
    assert stream.getvalue().strip().splitlines()[-1].startswith("[fetch] stopped, 3/10 (30%)")
