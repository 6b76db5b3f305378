"""Every command stopped by a real signal exits 128 + the signal after a clean stop, so
``cxr train ... && cxr evaluate ...`` and ``--dependency=afterok`` stop at an unfinished output.

Each test starts the real CLI in a subprocess, waits until it is demonstrably mid-work (its journal, partial file
or metrics has appeared), sends the signal and checks the exit code and what the output says about itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from predict_fixtures import make_model_dir
from script_modules import REPO

from cxr_tools.data.caches.format import JOURNAL
from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

pytestmark = pytest.mark.slow
TINY = ["--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic NIH-layout dataset and its 32 px cache (enough patients for 7-shot episodes)."""
    root = tmp_path_factory.mktemp("signals")
    generate(SyntheticConfig(dest=root / "data", patients=400, size=40, seed=0))
    preprocess(PreprocessConfig(src=root / "data", output=root / "cache", size=32, workers=0))
    return root / "data", root / "cache"


def _stop(args: list[str], ready: Callable[[], bool], sig: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``cxr ARGS`` until ``ready()``, send ``sig``; its exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxr_tools", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    deadline = time.monotonic() + 120
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"cxr {args[0]} ended before the signal: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"cxr {args[0]} never got mid-work: {proc.communicate()}")
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _has_lines(path: Path, n: int = 1) -> Callable[[], bool]:
    return lambda: path.is_file() and path.read_bytes().count(b"\n") >= n


def _status(run: Path) -> tuple[str, str]:
    info = json.loads((run / "run.json").read_text())
    return info["status"], info.get("signal")


def test_train_sigusr1_checkpoints_requeues_and_exits_138(data, tmp_path):
    _, cache = data
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    (bin_dir / "scontrol").chmod(stat.S_IRWXU)
    run = tmp_path / "run"
    args = ["train", str(cache), "-o", str(run), "--model", "conv4-tiny", "--epochs", "1000", "--batch-size", "8"]
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    code, err = _stop([*args, *TINY, "--log-every-steps", "1", "--requeue"], _has_lines(run / "metrics.jsonl", 3),
                      signal.SIGUSR1, env)  # fmt: skip
    assert code == 138, err
    assert _status(run) == ("interrupted", "SIGUSR1") and (run / "checkpoints" / "last.pt").is_file()
    assert log.read_text().split() == ["requeue", "4242"]  # requeued, and still not 0
    assert not (run / ".cxr.lock").exists()


def test_train_siamese_sigterm_exits_143(data, tmp_path):
    _, cache = data
    run = tmp_path / "run"
    args = ["train-siamese", str(cache), "-o", str(run), "--backbone", "conv4-tiny", "--epochs", "1000"]
    code, err = _stop([*args, *TINY, "--log-every-steps", "1"], _has_lines(run / "metrics.jsonl", 2), signal.SIGTERM)
    assert code == 143, err
    assert _status(run) == ("interrupted", "SIGTERM")


def test_meta_train_sigint_exits_130(data, tmp_path):
    _, cache = data
    run = tmp_path / "run"
    args = ["meta-train", str(cache), "-o", str(run), "--backbone", "conv4-tiny", "--engine", "func", "--first-order"]
    args += ["--shots", "7", "--queries", "2", "--images-per-patient", "3", "--episodes", "100000"]
    args += ["--val-episodes", "0", "--adapt-steps", "1", "--meta-batch", "1", "--log-every-steps", "1"]
    code, err = _stop([*args, *TINY], _has_lines(run / "metrics.jsonl", 2), signal.SIGINT)
    assert code == 130, err
    assert _status(run) == ("interrupted", "SIGINT")


def test_evaluate_sigusr1_exits_138_and_keeps_finished_episodes(data, tmp_path):
    _, cache = data
    out = tmp_path / "eval"
    args = ["evaluate", "--method", "pixels", "--data", str(cache), "-o", str(out), "--episodes", "300"]
    args += ["--shots", "7", "--queries", "2", "--images-per-patient", "3", *TINY]
    code, err = _stop(args, _has_lines(out / "progress.jsonl", 2), signal.SIGUSR1)
    assert code == 138, err
    assert "Interrupted by SIGUSR1" in err and not (out / "summary.json").exists()
    assert (out / "progress.jsonl").read_bytes().count(b"\n") >= 2  # the finished episodes are kept for --resume
    assert not (out / ".cxr.lock").exists()


def test_predict_sigterm_exits_143_and_keeps_its_partial_rows(data, tmp_path):
    src, _ = data
    model = make_model_dir(tmp_path / "model", size=32)
    out = tmp_path / "pred.csv"
    partial = tmp_path / ".pred.csv.partial"
    args = ["predict", "-m", str(model), str(src / "images"), "-o", str(out), "--batch-size", "1", "--workers", "0"]
    code, err = _stop([*args, "--device", "cpu"], _has_lines(partial, 3), signal.SIGTERM)
    assert code == 143, err
    assert not out.exists() and partial.is_file()


def test_preprocess_sigterm_exits_143_and_leaves_a_resumable_cache(data, tmp_path):
    src, _ = data
    out = tmp_path / "cache"
    args = ["preprocess", str(src), "-o", str(out), "--size", "32", "--workers", "0", "--chunk-size", "4"]
    code, err = _stop([*args, "--commit-seconds", "0"], lambda: (out / JOURNAL).is_file(), signal.SIGTERM)
    assert code == 143, err
    assert not (out / "manifest.json").exists() and (out / JOURNAL).is_file()


def test_download_sigterm_exits_143(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, then never answers: a stalled mirror
        base = f"http://127.0.0.1:{server.getsockname()[1]}"
        accepted: list[socket.socket] = []

        def connected() -> bool:
            server.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])
            return bool(accepted)

        args = ["download", "nih", "-o", str(tmp_path / "nih"), "--parts", "1", "--base-url", base, "--retries", "0"]
        code, err = _stop(args, connected, signal.SIGTERM)
        for conn in accepted:
            conn.close()
    assert code == 143, err
    assert "Interrupted by SIGTERM" in err
