"""Run under ``torchrun --nproc_per_node=2``: the shared TrainLoop with DDP and with averaged gradients.

Writes ``OUT/rank{r}.pt`` with each rank's final weights of every phase, for test_runtime_ddp.py:

* ``ddp``: a DistributedDataParallel model, each rank training on its half of every global batch;
* ``avg``: the same without DDP, gradients averaged by the loop (the meta-train path);
* ``straight`` / ``resumed``: a dropout model trained straight, and again with rank 1 alone receiving
  SIGTERM at step 3 and a second session resuming (both ranks must stop together, then match ``straight``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import torch

from cxr_tools.runtime.checkpointing import CheckpointPolicy
from cxr_tools.runtime.devices import set_threads
from cxr_tools.runtime.distributed import barrier, cleanup, init_distributed, shard_indices, wrap_ddp
from cxr_tools.runtime.rundir import open_run
from cxr_tools.runtime.seeding import derive_seed, make_generator, seed_everything
from cxr_tools.runtime.trainer import LoopOptions, LoopParts, TrainLoop

N, DIM, GLOBAL_BATCH, EPOCHS, SEED, LR = 16, 4, 8, 2, 3, 0.1


@dataclasses.dataclass(frozen=True)
class Cfg:
    phase: str


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = make_generator(SEED, 123)
    return torch.randn(N, DIM, generator=gen), torch.randn(N, 1, generator=gen)


def make_model(dropout: bool = False) -> torch.nn.Module:
    seed_everything(SEED)
    layers = [torch.nn.Linear(DIM, 8), torch.nn.Tanh()]
    if dropout:
        layers.append(torch.nn.Dropout(0.5))
    return torch.nn.Sequential(*layers, torch.nn.Linear(8, 1))


def global_batches(epoch: int) -> list[torch.Tensor]:
    """Index tensors of the global batches of ``epoch`` (the single-process reference uses them whole)."""
    order = torch.randperm(N, generator=make_generator(SEED, epoch))
    return [order[i : i + GLOBAL_BATCH] for i in range(0, N, GLOBAL_BATCH)]


def run_phase(out: Path, phase: str, info, *, ddp: bool, dropout: bool = False, signal_rank: int | None = None):
    x, y = data()
    model = make_model(dropout)
    torch.manual_seed(derive_seed(SEED, info.rank))  # each rank draws different dropout masks
    net = wrap_ddp(model, info) if ddp else model
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    run = open_run(
        out / f"run-{phase}", "test-ddp", Cfg(phase.split("-")[0]), is_main=info.is_main, world_size=info.world_size
    )
    barrier(info)

    def batches_fn(epoch: int, start: int):
        for idx in global_batches(epoch)[start:]:
            mine = idx[shard_indices(len(idx), info.rank, info.world_size)]
            yield x[mine], y[mine]

    steps = {"n": 0}

    def step_fn(batch):
        steps["n"] += 1
        if signal_rank == info.rank and steps["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        xb, yb = batch
        return {"loss": torch.nn.functional.mse_loss(net(xb), yb)}

    loop = TrainLoop(
        run,
        net,
        optimizer,
        LoopParts(step_fn, batches_fn),
        LoopOptions(max_epochs=EPOCHS, checkpoint=CheckpointPolicy(every_minutes=None), log_every_steps=1),
        dist=info,
    )
    result = loop.fit()
    barrier(info)
    return result, {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> int:
    out = Path(sys.argv[1])
    set_threads(1)
    info = init_distributed(backend="auto")
    results = {"rank": info.rank, "world_size": info.world_size, "backend": info.backend}
    weights = {}
    _, weights["ddp"] = run_phase(out, "ddp", info, ddp=True)
    _, weights["avg"] = run_phase(out, "avg", info, ddp=False)
    _, weights["straight"] = run_phase(out, "straight", info, ddp=True, dropout=True)
    first, _ = run_phase(out, "resumed", info, ddp=True, dropout=True, signal_rank=1)
    second, weights["resumed"] = run_phase(out, "resumed", info, ddp=True, dropout=True)
    results.update(first=dataclasses.asdict(first), second=dataclasses.asdict(second))
    torch.save(weights, out / f"rank{info.rank}.pt")
    (out / f"rank{info.rank}.json").write_text(json.dumps(results))
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
