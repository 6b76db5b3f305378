"""`cxr train` and `cxr train-siamese` under `torchrun --nproc-per-node=2` (gloo on CPU): they train, only
rank 0 writes, and a job whose processes all get SIGTERM (as SLURM sends it) resumes on rerun to the
weights of an uninterrupted DDP run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from train_fixtures import (
    REPO,
    assert_same_weights,
    step_records,
    subprocess_env,
    synthetic_cache,
    torchrun_command,
    weights,
)

from cxr_tools.models import load_model_dir

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory.mktemp("ddp-data"))


def _torchrun(*args: str) -> list[str]:
    cmd = torchrun_command(*args)
    if cmd is None:
        pytest.skip("torchrun is not installed")
    return cmd


def _env() -> dict[str, str]:
    return subprocess_env(GLOO_SOCKET_IFNAME="lo")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_train_under_torchrun_resumes_after_sigterm_to_the_identical_model(cache, tmp_path):
    args = ["train", str(cache), "-m", "conv4-tiny", "--norm", "batch", "--epochs", "2", "--batch-size", "8"]
    args += ["--log-every", "1", "--threads", "1", "--checkpoint-every", "2", "--json"]
    straight = _run(_torchrun(*args, "-o", str(tmp_path / "straight")))
    report = json.loads(straight.stdout)  # one report (rank 0), not one per rank
    assert report["world_size"] == 2 and report["status"] == "completed"
    info = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "completed"
    assert load_model_dir(tmp_path / "straight")[1]["training"] == "supervised"
    refused = subprocess.run(
        _torchrun(*args, "-o", str(tmp_path / "straight")), capture_output=True, text=True, cwd=REPO, env=_env()
    )
    assert refused.returncode != 0 and "--overwrite" in refused.stderr  # every rank stops, none hangs

    run = tmp_path / "run"
    proc = subprocess.Popen(
        _torchrun(*args, "-o", str(run)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(),
        start_new_session=True,  # its own process group: the launcher and both ranks, like a SLURM job step
    )
    deadline = time.monotonic() + 240
    while step_records(run) < 5:
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "training never reached step 5"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == "SIGTERM"
    resumed = json.loads(_run(_torchrun(*args, "-o", str(run))).stdout)
    assert resumed["resumed"] is True and resumed["status"] == "completed"
    assert_same_weights(weights(run / "model"), weights(tmp_path / "straight" / "model"))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, resumed["steps"] + 1))


def test_train_siamese_under_torchrun(cache, tmp_path):
    args = ["train-siamese", str(cache), "--backbone", "conv4-tiny", "--embedding-dim", "8", "--epochs", "1"]
    args += ["--batch-size", "8", "--threads", "1", "--json", "-o", str(tmp_path / "run")]
    report = json.loads(_run(_torchrun(*args)).stdout)
    assert report["world_size"] == 2 and report["status"] == "completed" and report["val_pairs"] > 0
    model, meta = load_model_dir(tmp_path / "run")
    assert meta["extra"]["threshold"] == report["val_threshold"] and model.num_classes == 8
