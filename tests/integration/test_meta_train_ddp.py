"""`cxr meta-train` under torchrun with 2 gloo ranks: each rank adapts its share of every meta-batch, the
meta-gradients are averaged, and the result equals one process doing the whole meta-batch."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from meta_train_fixtures import tiny_cache, tiny_config, weights

from cxr_tools.engine.meta_train import meta_train

REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"episodes": 8, "meta_batch": 4, "val_every": 1, "val_episodes": 3}  # 2 meta-steps, 2 tasks per rank


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_two_ranks_match_one_process(tmp_path, algorithm):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    cache = tiny_cache(tmp_path)
    run = tmp_path / "ddp"
    cfg = tiny_config(cache, run, **OPTIONS, algorithm=algorithm)
    config = tmp_path / "mt.yaml"
    config.write_text(
        yaml.safe_dump({k: v for k, v in dataclasses.asdict(cfg).items() if k not in {"cache", "output", "pool_seed"}})
    )
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_JOB_ID"):
        env.pop(var, None)
    cmd = [
        torchrun, "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        "-m", "cxr_tools", "meta-train", str(cache), "-o", str(run), "--config", str(config), "--json",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2

    single = meta_train(tiny_config(cache, tmp_path / "single", **OPTIONS, algorithm=algorithm))
    assert single.status == "completed"
    got, want = weights(run), weights(tmp_path / "single")
    for key, value in want.items():
        assert torch.allclose(got[key], value, atol=1e-6), key
    ddp_epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    one_epochs = [
        json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x
    ]
    ddp_auc = [r["val_auc"] for r in ddp_epochs if r["kind"] == "epoch"]
    one_auc = [r["val_auc"] for r in one_epochs if r["kind"] == "epoch"]
    assert len(ddp_auc) == 2 and ddp_auc == pytest.approx(one_auc, abs=1e-6)  # validation sharded, then gathered
