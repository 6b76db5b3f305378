"""PreemptionHandler: records signals without raising, restores handlers, requeues through scontrol."""

from __future__ import annotations

import logging
import os
import signal
import stat

import pytest

from cxr_tools.runtime.signals import PreemptionHandler


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_flag_and_previous_handler_is_restored(sig):
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(sig, previous)
    try:
        with PreemptionHandler() as handler:
            assert handler.installed and not handler.should_stop
            os.kill(os.getpid(), sig)  # would terminate the test process if not handled
            assert handler.should_stop and handler.signal_name == signal.Signals(sig).name
        assert signal.getsignal(sig) is previous
        os.kill(os.getpid(), sig)
        assert seen == [sig]
    finally:
        signal.signal(sig, old)


def test_first_signal_wins_and_request_stop_marks_stop():
    with PreemptionHandler() as handler:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert handler.signal_name == "SIGUSR1"
    other = PreemptionHandler()
    other.request_stop()
    assert other.should_stop and other.signal_name == "SIGTERM"


def _fake_scontrol(tmp_path, monkeypatch, exit_code=0):
    log = tmp_path / "calls.txt"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "boom" >&2\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return log


def test_requeue_calls_scontrol_with_the_job_id(tmp_path, monkeypatch):
    log = _fake_scontrol(tmp_path, monkeypatch)
    assert PreemptionHandler(requeue=True, environ={"SLURM_JOB_ID": "123"}).requeue_job() is True
    array = {"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "120", "SLURM_ARRAY_TASK_ID": "7"}
    assert PreemptionHandler(requeue=True, environ=array).requeue_job() is True
    assert log.read_text().splitlines() == ["requeue 123", "requeue 120_7"]


def test_requeue_is_skipped_outside_slurm_or_when_not_asked(tmp_path, monkeypatch, caplog):
    log = _fake_scontrol(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert PreemptionHandler(requeue=True, environ={}).requeue_job() is False
    assert "not a SLURM job" in caplog.text
    assert PreemptionHandler(requeue=False, environ={"SLURM_JOB_ID": "1"}).requeue_job() is False
    assert not log.exists()


def test_failed_requeue_is_logged_not_fatal(tmp_path, monkeypatch, caplog):
    _fake_scontrol(tmp_path, monkeypatch, exit_code=1)
    with caplog.at_level(logging.ERROR):
        assert PreemptionHandler(requeue=True, environ={"SLURM_JOB_ID": "9"}).requeue_job() is False
    assert "scontrol requeue 9 failed" in caplog.text and "boom" in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert PreemptionHandler(requeue=True, environ={"SLURM_JOB_ID": "9"}).requeue_job() is False
