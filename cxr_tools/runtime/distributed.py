"""torch.distributed set-up from torchrun or SLURM ``srun`` environment variables, and small collectives.

``torchrun --nproc_per_node=N`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
``srun`` sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODELIST, from which the master address
is the first host of the node list. gloo is used on CPU and nccl on CUDA. Without either launcher the
process runs alone (``world_size == 1``) and every helper here is a cheap no-op, so trainers call them
unconditionally. Only the main rank (rank 0) writes files.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError, CxrError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()


def detect_launch(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Rank, world size, local rank and master address/port from torchrun or srun variables; None if alone."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world = int(env["WORLD_SIZE"])
        if world <= 1:
            return None
        return {
            "rank": int(env["RANK"]),
            "world_size": world,
            "local_rank": int(env.get("LOCAL_RANK", "0")),
            "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
            "master_port": env.get("MASTER_PORT", "29500"),
            "launcher": "torchrun",
        }
    # srun sets SLURM_STEP_NUM_TASKS for the tasks of a step; the batch script itself is one task.
    ntasks = env.get("SLURM_STEP_NUM_TASKS") or (env.get("SLURM_NTASKS") if "SLURM_STEP_ID" in env else None)
    if "SLURM_PROCID" in env and ntasks and int(ntasks) > 1:
        job = env.get("SLURM_JOB_ID", "0")
        return {
            "rank": int(env["SLURM_PROCID"]),
            "world_size": int(ntasks),
            "local_rank": int(env.get("SLURM_LOCALID", "0")),
            "master_addr": env.get("MASTER_ADDR")
            or first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_NODELIST"]),
            "master_port": env.get("MASTER_PORT") or str(20000 + int(re.sub(r"\D", "", job) or 0) % 20000),
            "launcher": "srun",
        }
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,7],gpu1`` -> ``node03``).

    Asks ``scontrol show hostnames`` when available, else expands the common bracket syntax itself.
    """
    try:
        done = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ConfigError(f"Cannot read SLURM node list '{nodelist}'.", "Set MASTER_ADDR explicitly.")
    prefix, ranges = head.group(1), head.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def init_distributed(
    backend: str = "auto", device: torch.device | None = None, timeout_minutes: float = 10.0
) -> DistInfo:
    """Join the process group described by the environment (see :func:`detect_launch`).

    ``backend="auto"`` picks nccl when ``device`` is CUDA, gloo otherwise. On CUDA the process is bound to
    ``cuda:LOCAL_RANK``. Alone, returns rank 0 of 1 without creating a process group.
    """
    import torch
    import torch.distributed as dist

    launch = detect_launch()
    if launch is None:
        return SINGLE
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), launch["local_rank"], dist.get_backend())
    if backend == "auto":
        backend = "nccl" if device is not None and device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if backend not in {"gloo", "nccl"}:
        raise ConfigError(f"Unknown distributed backend '{backend}'.", "Use auto, gloo or nccl.")
    os.environ.setdefault("MASTER_ADDR", str(launch["master_addr"]))
    os.environ.setdefault("MASTER_PORT", str(launch["master_port"]))
    os.environ.setdefault("RANK", str(launch["rank"]))
    os.environ.setdefault("WORLD_SIZE", str(launch["world_size"]))
    os.environ.setdefault("LOCAL_RANK", str(launch["local_rank"]))
    if backend == "nccl":
        torch.cuda.set_device(launch["local_rank"])
    try:
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=launch["rank"],
            world_size=launch["world_size"],
            timeout=_dt.timedelta(minutes=timeout_minutes),
        )
    except (RuntimeError, ValueError) as exc:
        raise CxrError(
            f"Could not join the {launch['launcher']} process group of {launch['world_size']} ranks at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({str(exc).splitlines()[0]}).",
            "Launch with torchrun or srun so every rank starts, or set MASTER_ADDR/MASTER_PORT.",
        ) from exc
    return DistInfo(launch["rank"], launch["world_size"], launch["local_rank"], backend)


def cleanup(info: DistInfo | None = None) -> None:
    """Leave the process group (safe to call when none exists).

    With ``info`` (a rank that finished normally), wait for every rank first: destroying a gloo group while a
    peer still talks to it can abort the process at exit ("terminate called without an active exception").
    """
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if info is not None:
            barrier(info)
        gc.collect()  # drop cycles that still hold the group (a DDP reducer) before it is destroyed
        dist.destroy_process_group()


def _active(info: DistInfo | None) -> bool:
    if info is not None and not info.distributed:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(info: DistInfo | None = None) -> None:
    """Wait for every rank (no-op alone)."""
    if _active(info):
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo | None = None) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it (unchanged alone)."""
    if _active(info):
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def any_rank(flag: bool, info: DistInfo | None = None) -> bool:
    """True when ``flag`` is true on at least one rank (e.g. one rank got SIGTERM)."""
    if not _active(info):
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(obj: Any, info: DistInfo | None = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; e.g. validation metrics)."""
    if not _active(info):
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, info: DistInfo | None = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` alone)."""
    if not _active(info):
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(model: torch.nn.Module, info: DistInfo | None = None, weight: float = 1.0) -> None:
    """Average ``.grad`` of every trainable parameter over ranks, weighted by ``weight`` (e.g. tasks on this rank).

    For meta-training, where each rank computes the meta-gradient of its shard of tasks without DDP. A
    parameter without a gradient counts as zero so every rank joins the same collective.
    """
    if not _active(info):
        return
    import torch
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat(
        [g.detach().reshape(-1).to(torch.float64) for g in grads] + [grads[0].new_zeros(1, dtype=torch.float64)]
    )
    flat.mul_(weight)
    flat[-1] = weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    total = flat[-1].item()
    if total <= 0:
        raise ValueError("average_gradients: the weights of all ranks sum to zero")
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = (flat[offset : offset + n] / total).reshape(g.shape).to(dtype=g.dtype, device=g.device)
        offset += n


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The items ``rank`` handles of ``n`` items split over ``world_size`` ranks (strided, sizes differ by <= 1)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return list(range(rank, n, world_size))


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device | None = None) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel when distributed, else unchanged."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device is not None and device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)
