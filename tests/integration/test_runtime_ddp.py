"""DDP under torchrun with 2 gloo processes: gradients averaged, ranks agree, equal to one process on the
full batch, and a signal to one rank stops both and resumes identically."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_modules import REPO, load_script

SCRIPT = Path(__file__).with_name("runtime_ddp_script.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reference() -> dict[str, torch.Tensor]:
    """Single-process training on the full global batches (no DDP, no process group)."""
    ddp = load_script(SCRIPT, "cxr_runtime_ddp_script")
    torch.set_num_threads(1)
    x, y = ddp.data()
    model = ddp.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=ddp.LR)
    for epoch in range(ddp.EPOCHS):
        for idx in ddp.global_batches(epoch):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.state_dict()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_JOB_ID"):
        env.pop(var, None)
    cmd = [
        torchrun,
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(SCRIPT),
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks, infos


@pytest.mark.distributed
def test_ddp_ranks_agree_and_match_single_process_full_batch(ddp_run):
    _, ranks, infos = ddp_run
    assert [i["rank"] for i in infos] == [0, 1] and {i["backend"] for i in infos} == {"gloo"}
    reference = _reference()
    for phase in ("ddp", "avg"):
        for key, value in reference.items():
            assert torch.equal(ranks[0][phase][key], ranks[1][phase][key]), f"{phase}: ranks differ on {key}"
            assert torch.allclose(ranks[0][phase][key], value, atol=1e-6), f"{phase}: {key} != single process"
    initial = load_script(SCRIPT, "cxr_runtime_ddp_script").make_model().state_dict()
    assert not torch.allclose(ranks[0]["ddp"]["0.weight"], initial["0.weight"])  # training really moved it


@pytest.mark.distributed
def test_signal_to_one_rank_stops_both_and_resume_is_identical(ddp_run):
    out, ranks, infos = ddp_run
    for info in infos:
        assert info["first"]["status"] == "interrupted" and info["first"]["steps"] == 3
        assert info["second"]["status"] == "completed" and info["second"]["resumed"] is True
    for key in ranks[0]["straight"]:
        assert torch.equal(ranks[0]["resumed"][key], ranks[0]["straight"][key]), key
        assert torch.equal(ranks[1]["resumed"][key], ranks[0]["straight"][key]), key
    run_info = json.loads((out / "run-resumed" / "run.json").read_text())
    assert run_info["status"] == "completed" and run_info["resumed"] == 1 and run_info["world_size"] == 2
    records = [json.loads(line) for line in (out / "run-resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]  # no duplicates after resume
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    state = torch.load(out / "run-resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert len(state["extra"]["rng_per_rank"]) == 2
