"""`cxr meta-train` as a real process: SIGTERM mid-run writes last.pt and exits as interrupted; rerunning the same
command resumes to exactly the weights of an uninterrupted run (CPU), for MAML and ProtoNet-ML alike."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from meta_train_fixtures import tiny_cache, tiny_config, weights

from cxr_tools.engine.meta_train import meta_train

REPO = Path(__file__).resolve().parents[2]
# 8 meta-steps, validation after 4 and 8 (best.pt and RUN/model depend on it too).
OPTIONS = {"episodes": 16, "val_every": 4, "val_episodes": 2}


def _config_file(cfg, path: Path) -> Path:
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in {"cache", "output", "pool_seed"}}
    path.write_text(yaml.safe_dump(values))
    return path


def _command(cache: Path, run: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "cxr_tools", "meta-train", str(cache), "-o", str(run), "--config", str(config)]


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"kind": "step"' in line)


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_sigterm_then_rerun_resumes_to_identical_weights(tmp_path, algorithm):
    cache = tiny_cache(tmp_path)
    options = {**OPTIONS, "algorithm": algorithm}
    reference = meta_train(tiny_config(cache, tmp_path / "ref", **options))
    assert reference.status == "completed" and reference.meta_steps == 8

    run = tmp_path / "run"
    config = _config_file(tiny_config(cache, run, **options), tmp_path / "mt.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _command(cache, run, config), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while _steps_logged(run) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no meta-step within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]  # 128 + SIGTERM: a preempted run is not a success
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == "SIGTERM", err[-3000:]
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 1 <= stopped < 8
    assert "Rerun the same command to resume" in err and not (run / "model").exists()

    done = subprocess.run(_command(cache, run, config), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"] == 1
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    expected = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in expected.items():
        assert torch.equal(final[key], value), key
    for key, value in weights(tmp_path / "ref").items():
        assert torch.equal(weights(run)[key], value), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 9))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
