"""The run lifecycle every trainer shares: one place for what ``cxr train``, ``train-siamese`` and ``meta-train``
do around their own step, batches and validation.

1. :func:`run_in_context`: threads, device, the torchrun/srun process group, seeds; afterwards a barrier and
   leaving the group (only when this process created it), with the trainer's objects released first.
2. :func:`open_run_dir`: create or resume the run directory on rank 0; a refusal is raised on every rank with
   the same error class and message, so no rank waits forever for the others.
3. :func:`make_loop` and :func:`fit`: the :class:`~cxr_tools.runtime.trainer.TrainLoop` (checkpoint policy,
   signals and requeue, AMP, DDP, metrics) built from :class:`~cxr_tools.runtime.options.RunOptions`, and its
   fit with out-of-memory errors turned into an actionable message.
4. :func:`load_selected`: the weights that become ``RUN/model/`` (``best.pt`` when there is one). The model card
   (:func:`cxr_tools.models.checkpoints.model_meta`) and the folder itself
   (:func:`cxr_tools.models.checkpoints.save_model_dir`) are models/' and the engine calls them: this layer
   does not import models (docs/design.md, layers).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cxr_tools import errors
from cxr_tools.errors import CxrError

if TYPE_CHECKING:
    import torch

    from cxr_tools.runtime.checkpointing import FrozenWeights
    from cxr_tools.runtime.distributed import DistInfo
    from cxr_tools.runtime.estimate import RunPlan
    from cxr_tools.runtime.options import RunOptions, TrainingOptions
    from cxr_tools.runtime.progress import Progress
    from cxr_tools.runtime.rundir import RunDir
    from cxr_tools.runtime.trainer import LoopParts, TrainLoop, TrainResult

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass
class RuntimeContext:
    """Device, distributed position and clean-up of one training command."""

    device: torch.device
    device_name: str
    dist: DistInfo
    owns_group: bool

    def close(self, completed: bool = False) -> None:
        """Leave the process group: after a barrier when this rank completed (every rank then has finished its
        collectives), at once after an error (a barrier could wait forever on a rank that died)."""
        if self.owns_group:
            from cxr_tools.runtime.distributed import cleanup

            cleanup(self.dist if completed else None)


@dataclass(frozen=True, kw_only=True)
class FitReport:
    """What a trainer's session reports about its run, whichever trainer: where the run and its model are, how
    far it got, how fast. Under torchrun every rank returns one; ``rank`` says which (rank 0 prints)."""

    run_dir: Path
    model_dir: Path | None
    status: str
    epochs: int
    steps: int
    best_epoch: int | None
    resumed: bool
    stopped_early: bool
    seconds: float
    samples_per_second: float
    device: str
    world_size: int
    train_images: int
    rank: int = 0


def fit_report(
    run: RunDir, model_dir: Path | None, result: TrainResult, ctx: RuntimeContext, *, samples: int, train_images: int
) -> dict[str, Any]:
    """The :class:`FitReport` fields of a finished :func:`fit` (``samples``: images this session trained on)."""
    return {
        "run_dir": run.path,
        "model_dir": model_dir,
        "status": result.status,
        "epochs": result.epochs,
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "resumed": result.resumed,
        "stopped_early": result.stopped_early,
        "seconds": result.seconds,
        "samples_per_second": samples / result.seconds if result.seconds > 0 else 0.0,
        "device": ctx.device_name,
        "world_size": ctx.dist.world_size,
        "train_images": train_images,
        "rank": ctx.dist.rank,
    }


def setup(device_spec: str, threads: int | None, seed: int) -> RuntimeContext:
    """Resolve the device, join a torchrun/srun process group if launched so, seed everything."""
    import torch
    import torch.distributed as tdist

    from cxr_tools.runtime.devices import describe_device, resolve_device, set_threads
    from cxr_tools.runtime.distributed import init_distributed
    from cxr_tools.runtime.seeding import seed_everything

    set_threads(threads)
    device = resolve_device(device_spec)
    already = tdist.is_available() and tdist.is_initialized()
    dist = init_distributed(backend="auto", device=device)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(seed)
    return RuntimeContext(device, describe_device(device), dist, owns_group=dist.distributed and not already)


def run_in_context(options: RunOptions, body: Callable[[RuntimeContext], R]) -> R:
    """``body(ctx)`` inside the runtime of ``options`` (device, seeds, process group).

    ``body`` is a function of its own so that its objects (the DDP-wrapped model among them) are released when
    it returns, before the process group is left after a barrier: gloo can abort at exit otherwise.
    """
    ctx = setup(options.device, options.threads, options.seed)
    completed = False
    try:
        result = body(ctx)
        completed = True
        return result
    finally:
        ctx.close(completed)


def plan_in_context(options: RunOptions, body: Callable[[RuntimeContext], Any]) -> RunPlan:
    """:func:`run_in_context` for a trainer's ``--dry-run`` body, which returns its :class:`RunPlan`."""
    return cast("RunPlan", run_in_context(options, body))


def open_run_dir(config: Any, kind: str, ctx: RuntimeContext) -> RunDir:
    """Create or reopen the run directory ``config.output`` (rank 0 writes; every rank learns the outcome).

    ``config`` is saved as ``config.yaml`` (resolve paths in it first). A refusal on rank 0 (another command's
    run, a completed run, changed options) is raised on every rank as the same :class:`CxrError` class.
    """
    from cxr_tools.runtime.distributed import broadcast_object
    from cxr_tools.runtime.rundir import open_run

    error: CxrError | None = None
    run: RunDir | None = None
    try:
        run = open_run(
            config.output,
            kind,
            config,
            resume=config.resume,
            overwrite=config.overwrite,
            is_main=ctx.dist.is_main,
            device=ctx.device_name,
            world_size=ctx.dist.world_size,
        )
    except CxrError as exc:
        if not ctx.dist.distributed:
            raise
        error = exc
    shared = broadcast_object(None if error is None else (type(error).__name__, error.message, error.hint), ctx.dist)
    if error is not None:
        raise error
    if shared is not None:
        name, message, hint = shared
        cls = getattr(errors, name, CxrError)
        raise (cls if isinstance(cls, type) and issubclass(cls, CxrError) else CxrError)(message, hint)
    return cast("RunDir", run)  # open_run returned on this rank: no error, a run


def make_loop(
    options: RunOptions,
    ctx: RuntimeContext,
    run: RunDir | None,
    model: Any,
    optimizer: Any,
    progress: Progress | None,
    parts: LoopParts,
    *,
    scheduler: Any = None,
    **settings: Any,
) -> TrainLoop:
    """The :class:`~cxr_tools.runtime.trainer.TrainLoop` of a trainer's ``parts`` with the run options applied.

    ``settings`` are the trainer's own :class:`~cxr_tools.runtime.trainer.LoopOptions` (``max_epochs``,
    ``monitor``, ``estimate``, ...); checkpoint policy, requeue, AMP and logging come from ``options``, device and
    process group from ``ctx``. ``run`` is None for a loop that only :meth:`~TrainLoop.measure` s (``--dry-run``).
    """
    from cxr_tools.runtime.checkpointing import CheckpointPolicy
    from cxr_tools.runtime.trainer import LoopOptions, TrainLoop

    loop_options = LoopOptions(
        checkpoint=CheckpointPolicy(options.checkpoint_every_steps, options.checkpoint_every_minutes),
        requeue=options.requeue,
        amp=options.amp,
        log_every_steps=options.log_every_steps,
        **settings,
    )
    return TrainLoop(
        run,
        model,
        optimizer,
        parts,
        loop_options,
        scheduler=scheduler,
        progress=progress,
        device=ctx.device,
        dist=ctx.dist,
    )


def dry_run(loop: TrainLoop, command: str, output: Any, ctx: RuntimeContext, plan: list[tuple[str, str]]) -> RunPlan:
    """What ``--dry-run`` reports: the trainer's ``plan`` rows and the estimate from a few steps timed in memory
    (:meth:`~cxr_tools.runtime.trainer.TrainLoop.measure`); no run directory is opened or written."""
    from cxr_tools.runtime.estimate import RunPlan

    return RunPlan(command, Path(output), ctx.device_name, tuple(plan), loop.measure())


def fit(loop: TrainLoop, oom_message: str, oom_hint: str) -> TrainResult:
    """``loop.fit()``, an out-of-memory error turned into a :class:`ResourceError` with this message and hint."""
    from cxr_tools.runtime.devices import explain_out_of_memory

    with explain_out_of_memory(oom_message, oom_hint):
        return loop.fit()


def load_selected(run: RunDir, model: Any, frozen: FrozenWeights | None = None) -> str:
    """Load ``best.pt`` into ``model`` when there is one; return which weights the model now holds.

    Returns ``"best"`` (the best monitored epoch) or ``"last"`` (no ``best.pt``: no validation, or the metric
    never improved; the final weights are kept). ``frozen``: the trainer's ``LoopParts.frozen`` (weights
    ``best.pt`` names instead of holding; ``model`` holds them).
    """
    from cxr_tools.runtime.checkpointing import load_checkpoint, load_model_weights

    if not run.best_checkpoint.is_file():
        log.info("No best.pt; the final weights become the model.")
        return "last"
    state = load_checkpoint(run.best_checkpoint)
    load_model_weights(state, model, frozen, source=str(run.best_checkpoint), hint="Rerun with --overwrite.")
    return "best"


def best_step(run: RunDir) -> int | None:
    """The step at which ``best.pt`` was written (None without one)."""
    from cxr_tools.runtime.checkpointing import load_checkpoint

    if not run.best_checkpoint.is_file():
        return None
    return int(load_checkpoint(run.best_checkpoint)["step"])


def best_record(run: RunDir) -> dict[str, Any]:
    """The metrics record of the best epoch (the last one flagged ``best``, else the last epoch record)."""
    epochs = [r for r in run.read_metrics() if r.get("kind") == "epoch"]
    flagged = [r for r in epochs if r.get("best")]
    return (flagged or epochs or [{}])[-1]


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when missing or NaN (valid JSON in ``--json`` output)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def make_optimisation(
    model: Any, ctx: RuntimeContext, options: TrainingOptions, *, steps_per_epoch: int, monitor: str = "val_auc"
) -> tuple[Any, Any, Any]:
    """Move ``model`` to the device, wrap it for DDP, and build the optimiser and LR schedule of ``options``.

    ``monitor`` is the validation metric (to maximise) that the ``plateau`` schedule follows.
    """
    import torch

    from cxr_tools.runtime.distributed import wrap_ddp
    from cxr_tools.runtime.schedules import make_scheduler
    from cxr_tools.runtime.seeding import derive_seed

    model.to(ctx.device)
    if ctx.dist.distributed:
        torch.manual_seed(derive_seed(options.seed, 1, ctx.dist.rank))  # per-rank dropout masks
    net = wrap_ddp(model, ctx.dist, ctx.device)
    params = [p for p in net.parameters() if p.requires_grad]
    if options.optimizer == "sgd":
        optimizer: Any = torch.optim.SGD(
            params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    total = steps_per_epoch * options.epochs
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    schedule = make_scheduler(
        options.schedule,
        optimizer,
        total_steps=max(total, options.warmup_steps + 1),
        warmup_steps=options.warmup_steps,
        step_size=max(1, total // 3),
        monitor=monitor,
        mode="max",
    )
    return net, optimizer, schedule


def epoch_loop(
    options: TrainingOptions,
    ctx: RuntimeContext,
    run: RunDir | None,
    net: Any,
    optimizer: Any,
    schedule: Any,
    progress: Progress | None,
    parts: LoopParts,
    *,
    monitor: str,
    mode: str,
    **settings: Any,
) -> TrainLoop:
    """:func:`make_loop` for the epoch-based trainers: epochs, max steps, schedule and early stopping of
    ``options``; ``settings`` are further :class:`~cxr_tools.runtime.trainer.LoopOptions` (``estimate``)."""
    from cxr_tools.runtime.checkpointing import EarlyStopping

    return make_loop(
        options,
        ctx,
        run,
        net,
        optimizer,
        progress,
        parts,
        scheduler=schedule,
        max_epochs=options.epochs,
        max_steps=options.max_steps,
        monitor=monitor,
        mode=mode,
        early_stopping=EarlyStopping(options.patience, mode=mode) if options.patience else None,
        **settings,
    )
