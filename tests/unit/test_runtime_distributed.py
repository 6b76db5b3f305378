"""Launch detection (torchrun / srun env), node lists, sharding, and the single-process no-op path."""

from __future__ import annotations

import pytest
import torch

from cxr_tools.runtime import distributed as d


def test_torchrun_environment_is_detected():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    launch = d.detect_launch(env)
    assert launch == {
        "rank": 1,
        "world_size": 4,
        "local_rank": 1,
        "master_addr": "10.0.0.1",
        "master_port": "1234",
        "launcher": "torchrun",
    }
    assert d.detect_launch({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert d.detect_launch({}) is None


def test_srun_environment_is_detected_but_not_a_plain_batch_script(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is expanded here
    env = {
        "SLURM_PROCID": "3",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "1234",
        "SLURM_NODELIST": "gpu[07-08]",
        "SLURM_STEP_ID": "0",
    }
    launch = d.detect_launch(env)
    assert launch["rank"] == 3 and launch["world_size"] == 4 and launch["local_rank"] == 1
    assert launch["master_addr"] == "gpu07" and launch["launcher"] == "srun"
    assert launch["master_port"] == str(20000 + 1234)
    # inside `sbatch --ntasks=4` but not under srun there is one process: no process group
    assert d.detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "5"}) is None


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("node01", "node01"), ("node[03-05,7]", "node03"), ("gpu[12,14],cpu1", "gpu12"), ("a1,b2", "a1")],
)
def test_first_host_without_scontrol(nodelist, first, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert d.first_host(nodelist) == first


def test_shard_indices_cover_everything_once():
    shards = [d.shard_indices(10, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError):
        d.shard_indices(10, 3, 3)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    info = d.init_distributed()
    assert info == d.SINGLE and info.is_main and not info.distributed
    t = torch.tensor([2.0, 4.0])
    assert torch.equal(d.all_reduce_mean(t, info), torch.tensor([2.0, 4.0]))
    assert d.any_rank(True, info) is True and d.any_rank(False, info) is False
    assert d.broadcast_object({"a": 1}, info) == {"a": 1} and d.gather_objects(5, info) == [5]
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.grad.clone()
    d.average_gradients(model, info)
    assert torch.equal(model.weight.grad, before)
    assert d.wrap_ddp(model, info) is model
    d.barrier(info)
    d.cleanup()
