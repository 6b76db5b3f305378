"""SIGTERM / SIGUSR1 sent to a real training process: it writes last.pt, exits 0 as ``interrupted``, and a
rerun resumes to the same weights as an uninterrupted run. ``--requeue`` calls ``scontrol requeue``."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from script_modules import REPO, load_script
from slurm_cluster import require_slurm, start_requeued_now

SCRIPT = Path(__file__).with_name("runtime_train_script.py")


tiny = load_script(SCRIPT, "cxr_runtime_train_script")  # one module object shared by the runtime test files
_weights, _assert_identical = tiny.weights, tiny.assert_identical


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    _, model = tiny.train(tmp_path_factory.mktemp("ref") / "run", tiny.TinyConfig(epochs=2))
    return _weights(model)


def _start(run: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run), "--epochs", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training never reached the ready step")
        time.sleep(0.05)


def _interrupt(tmp_path: Path, sig: int, *extra: str, env: dict[str, str] | None = None) -> tuple[Path, dict]:
    run, ready = tmp_path / "run", tmp_path / "ready"
    proc = _start(run, "--sleep", "0.3", "--ready", str(ready), "--ready-step", "3", *extra, env=env)
    _wait_for(ready, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    return run, result


def _fake_scontrol(tmp_path: Path, exit_code: int = 0) -> tuple[dict[str, str], Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


@pytest.mark.slow
def test_sigterm_checkpoints_exits_zero_and_rerun_resumes_identically(tmp_path, reference):
    run, result = _interrupt(tmp_path, signal.SIGTERM)
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM"
    assert 3 <= result["steps"] < 12
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["end_time"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == result["steps"]
    rerun = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--epochs", "2"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["resumed"] is True
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    _assert_identical(final, reference)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_sigusr1_with_requeue_under_slurm_calls_scontrol_and_resumes(tmp_path, reference):
    env, log = _fake_scontrol(tmp_path)
    env["SLURM_JOB_ID"] = "4242"
    run, result = _interrupt(tmp_path, signal.SIGUSR1, "--requeue", env=env)
    assert result["status"] == "interrupted" and result["signal"] == "SIGUSR1"
    assert log.read_text().split() == ["requeue", "4242"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["slurm"]["job_id"] == "4242"
    _, model = tiny.train(run, tiny.TinyConfig(epochs=2, requeue=False))
    _assert_identical(_weights(model), reference)


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_job_records_slurm_job_id(tmp_path):
    require_slurm()
    run = tmp_path / "run"
    cmd = f"cd {REPO} && {sys.executable} {SCRIPT} {run} --epochs 1"
    done = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--output", str(tmp_path / "slurm-%j.out"), "--wrap", cmd],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["slurm"]["job_id"] == job_id


@pytest.mark.slurm
@pytest.mark.slow
def test_real_slurm_preemption_requeues_and_the_job_resumes(tmp_path, reference):
    require_slurm()
    run, ready = tmp_path / "run", tmp_path / "ready"
    cmd = (
        f"cd {REPO} && exec {sys.executable} {SCRIPT} {run} --epochs 2 --sleep 0.3 --ready {ready} "
        "--ready-step 3 --requeue"
    )
    sub = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--requeue",
            "--output",
            str(tmp_path / "slurm-%j.out"),
            "--open-mode=append",
            "--wrap",
            cmd,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert time.monotonic() < deadline, "the job never started training"
            time.sleep(0.2)
        ready.unlink()
        signalled = subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], capture_output=True, text=True)
        assert signalled.returncode == 0, signalled.stderr
        info: dict = {}
        start_requeued_now(job_id)
        while time.monotonic() < deadline + 180:
            if (run / "run.json").exists():
                info = json.loads((run / "run.json").read_text())
                if info["status"] == "completed":
                    break
            time.sleep(0.5)
        assert info.get("status") == "completed", (info, (tmp_path / f"slurm-{job_id}.out").read_text())
        assert info["resumed"] == 1 and info["sessions"][0]["status"] == "interrupted"
        assert info["slurm"]["job_id"] == job_id and info["slurm"].get("restart_count") == "1"
        final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
        _assert_identical(final, reference)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
