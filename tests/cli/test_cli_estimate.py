"""Honest time from the command line: ``--dry-run`` prints the plan and an estimate and writes no run folder, and
a real Ctrl-C says at once what it will do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cache_factory import make_cache, make_index
from script_modules import REPO
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()
LABELS = ("A", "B", "C", "D", "E")
SPLIT = "train=A,B;val=C,D;test=E"
TINY = ["--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Five single-label classes of 20 patients each and 80 negatives, train/val splits, 32 px."""
    n = 180
    values = np.zeros((n, len(LABELS)), dtype=np.float32)
    for i in range(100):
        values[i, i % len(LABELS)] = 1
    splits = ["train" if i % 5 else "val" for i in range(n)]
    index = make_index(n, LABELS, values=values, splits=splits, patients=[f"p{i}" for i in range(n)])
    return make_cache(tmp_path_factory.mktemp("estimate"), labels=LABELS, index=index, size=32)


def _plan(args: list[str]) -> dict:
    result = runner.invoke(app, [*args, "--dry-run", "--json", *TINY])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_meta_train_dry_run_estimates_from_inner_steps_and_writes_nothing(cache, tmp_path):
    run = tmp_path / "run"
    args = ["meta-train", str(cache), "-o", str(run), "--meta-split", SPLIT, "--backbone", "conv4-tiny"]
    plan = _plan([*args, "--shots", "3", "--queries", "2", "--episodes", "400", "--engine", "func"])
    assert plan["command"] == "meta-train" and plan["output"] == str(run) and plan["device"] == "cpu"
    rows = dict(plan["plan"])
    assert rows["meta-steps"] == "100 of 4 tasks, maml (second order), 5 inner steps, engine func"
    assert plan["estimate"]["unit"] == "inner steps" and plan["estimate"]["measured"] == 1
    assert plan["estimate"]["seconds"] > 0
    assert not run.exists()


@pytest.mark.parametrize("command", ["train", "train-siamese"])
def test_epoch_trainers_dry_run_time_a_few_steps(cache, tmp_path, command):
    run = tmp_path / "run"
    model = ["--model", "conv4-tiny"] if command == "train" else ["--backbone", "conv4-tiny"]
    args = [command, str(cache), "-o", str(run), *model, "--epochs", "50", "--batch-size", "4"]
    plan = _plan(args)
    assert plan["estimate"]["unit"] == "steps" and plan["estimate"]["measured"] >= 1
    assert "50 epochs of" in dict(plan["plan"])["steps"] and not run.exists()
    table = runner.invoke(app, [*args, "--dry-run", *TINY])
    assert table.exit_code == 0 and "nothing was written" in table.stdout, table.output
    assert "estimated" in table.stdout and "measured step" in table.stdout and not run.exists()


def test_evaluate_dry_run_times_episodes_outside_the_output(cache, tmp_path):
    out = tmp_path / "eval"
    split = "train=A;val=B;test=C,D,E"
    args = ["evaluate", "--method", "pixels", "--data", str(cache), "-o", str(out), "--meta-split", split]
    plan = _plan([*args, "--episodes", "50", "--shots", "3", "--queries", "2"])
    assert plan["estimate"]["unit"] == "episodes" and plan["estimate"]["seconds"] >= 0
    assert dict(plan["plan"])["episodes"].startswith("50 of 2-way 3-shot") and not out.exists()


@pytest.mark.slow
def test_ctrl_c_during_meta_training_says_at_once_what_it_does(cache, tmp_path):
    run = tmp_path / "run"
    args = ["meta-train", str(cache), "-o", str(run), "--meta-split", SPLIT, "--backbone", "conv4-tiny"]
    args += ["--engine", "func", "--shots", "3", "--queries", "2", "--episodes", "100000", "--val-episodes", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_tools", *args, "--meta-batch", "1", "--log-every-steps", "1", *TINY],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Ctrl-C: stopping " in err and "meta-step" in err, err
    assert "then saving last.pt; rerun the same command to resume" in err
    assert "Press Ctrl-C again to stop at once" in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
