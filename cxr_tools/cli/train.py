"""``cxr train CACHE -o RUN --model NAME``: the supervised multi-label baseline (also the fine-tune pre-training).

The training options shared with ``cxr train-siamese`` are declared here once.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    JsonOpt,
    OverwriteOpt,
    PoolSeedOpt,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
    WorkersOpt,
    config_from_params,
    emit,
    emit_plan,
    exit_if_interrupted,
    handle_errors,
    progress_for,
)
from cxr_tools.cli.defaults import training_paths

CacheArg = Annotated[
    Path | None,
    typer.Argument(
        help="Cache directory written by `cxr preprocess`, or its name in $CXR_CACHE.",
        show_default="the only cache in $CXR_CACHE",
    ),
]
RunOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Run directory to write (or resume).",
        show_default="$CXR_RUNS/<command>/<cache>-<...>-<hash of the settings>",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", help="Pretrained weights of the model (see `cxr models NAME`).", show_default="none"),
]
NormOpt = Annotated[
    str | None,
    typer.Option("--norm", help="Normalisation layers: batch, group, instance, none.", show_default="model's"),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="Comma-separated classes to train, or 'base' for the meta-split's meta-train classes (their "
        "images only: held-out classes are never trained).",
        show_default="all",
    ),
]
BaseMetaSplitOpt = Annotated[
    str | None,
    typer.Option(
        "--meta-split",
        help="Meta-split for --classes base: a YAML/JSON file, 'train=A,B;val=C;test=D' or 'metachest'.",
        show_default="the cache's meta_split.json, else metachest",
    ),
]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")]
MaxStepsOpt = Annotated[
    int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps.", show_default=False)
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Global batch size (split over torchrun ranks).")]
LrOpt = Annotated[float, typer.Option("--lr", help="Learning rate.")]
WdOpt = Annotated[float, typer.Option("--weight-decay", help="Weight decay.")]
OptimOpt = Annotated[str, typer.Option("--optimizer", help="adamw or sgd (with --momentum).")]
MomentumOpt = Annotated[float, typer.Option("--momentum", help="SGD momentum.")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="LR schedule: none, cosine, step, plateau, onecycle.")]
WarmupOpt = Annotated[int, typer.Option("--warmup-steps", min=0, help="Linear LR warmup steps.")]
PatienceOpt = Annotated[
    int | None,
    typer.Option("--patience", min=1, help="Stop after N epochs without validation improvement.", show_default="off"),
]
AugmentOpt = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Light anatomical augmentation (no flips, ±7°).")
]
ValBatchOpt = Annotated[
    int | None, typer.Option("--val-batch-size", min=1, help="Validation batch size.", show_default="2 x batch")
]
AmpOpt = Annotated[bool, typer.Option("--amp", help="Mixed precision (CUDA only; ignored on CPU).")]
TrainResumeOpt = Annotated[
    bool, typer.Option("--resume/--no-resume", help="Continue an existing incomplete run directory.")
]
RequeueOpt = Annotated[
    bool, typer.Option("--requeue", help="On SIGTERM/SIGUSR1 under SLURM, checkpoint and `scontrol requeue`.")
]
CkptStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every-steps",
        "--checkpoint-every",
        min=1,
        help="Write last.pt every N steps (--checkpoint-every: old name).",
        show_default="epoch ends",
    ),
]
CkptMinutesOpt = Annotated[
    float | None,
    typer.Option(
        "--checkpoint-every-minutes",
        "--checkpoint-minutes",
        min=0.01,
        help="Write last.pt every M minutes (--checkpoint-minutes: old name).",
    ),
]
LogEveryOpt = Annotated[
    int,
    typer.Option(
        "--log-every-steps", "--log-every", min=0, help="Step records in metrics.jsonl every N steps (0 = epochs only)."
    ),
]


def split_classes(text: str | None) -> tuple[str, ...]:
    """``"A,B"`` -> ``("A", "B")``; None or empty -> ``()`` (all classes)."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def _training_options(
    weights: WeightsOpt = None,
    norm: NormOpt = None,
    classes: ClassesOpt = None,
    meta_split: BaseMetaSplitOpt = None,
    pool_seed: PoolSeedOpt = 0,
    epochs: EpochsOpt = 10,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-3,
    weight_decay: WdOpt = 1e-4,
    optimizer: OptimOpt = "adamw",
    momentum: MomentumOpt = 0.9,
    schedule: ScheduleOpt = "cosine",
    warmup_steps: WarmupOpt = 0,
    patience: PatienceOpt = None,
    augment: AugmentOpt = True,
    val_batch_size: ValBatchOpt = None,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    amp: AmpOpt = False,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    resume: TrainResumeOpt = True,
    overwrite: OverwriteOpt = False,
    requeue: RequeueOpt = False,
    checkpoint_every_steps: CkptStepsOpt = None,
    checkpoint_every_minutes: CkptMinutesOpt = 10.0,
    log_every_steps: LogEveryOpt = 50,
) -> None:
    """The options every training command shares, declared once (:func:`training_command` adds them)."""


def training_command(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the shared training options (:func:`_training_options`) before its ``--config``.

    Typer reads a command's options from its signature, so the shared ones are spliced into it; the command
    takes them as ``**options`` and builds its config from ``ctx.params`` (:func:`config_from_params`).
    """
    hints = typing.get_type_hints(_training_options, include_extras=True)
    shared = [p.replace(annotation=hints[p.name]) for p in inspect.signature(_training_options).parameters.values()]
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    cut = [p.name for p in own].index("config")
    command.__signature__ = inspect.Signature([*own[:cut], *shared, *own[cut:]], return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in shared}}
    return command


@training_command
def train(
    ctx: typer.Context,
    cache: CacheArg = None,
    output: RunOpt = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            "--backbone",
            help="Zoo model or foundation encoder (hf:DIR, hf:ORG/NAME, or a preset; `cxr models` lists them).",
        ),
    ] = "resnet18",
    freeze: Annotated[
        bool,
        typer.Option(
            "--freeze",
            help="Train the head only, on the model's frozen (pretrained) features; a foundation encoder's run then "
            "saves only its head and reloads the encoder from its source.",
        ),
    ] = False,
    uncertainty: Annotated[
        str, typer.Option("--uncertainty", help="Uncertain labels: ignore (masked out of the loss), zeros, ones.")
    ] = "ignore",
    balance: Annotated[
        str,
        typer.Option("--balance", help="sampler (class-balanced draws), weights (BCE pos_weight) or none."),
    ] = "none",
    max_pos_weight: Annotated[
        float | None, typer.Option("--max-pos-weight", help="Cap on pos_weight with --balance weights.")
    ] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    dry_run: DryRunOpt = False,
    **options: Any,
) -> None:
    """Train a multi-label classifier (one sigmoid per finding, BCE) with per-class validation AUC.

    Rerun the same command to resume an interrupted run (kill, SIGTERM, preemption): it continues from
    RUN/checkpoints/last.pt and ends with the same weights. Runs under `torchrun --nproc_per_node=N` as DDP.
    """
    with handle_errors():
        from cxr_tools.engine.train import TrainConfig
        from cxr_tools.engine.train import train as train_engine

        training_paths(ctx, "train", model)
        cfg = config_from_params(TrainConfig, ctx.params, classes=split_classes(options["classes"]))
        if dry_run:
            from cxr_tools.engine.train import plan_train

            emit_plan(plan_train(cfg), json_output)
            return
        result = train_engine(cfg, progress_for(quiet))

    if result.rank == 0:  # under torchrun every rank returns; one report
        emit(result, json_output, lambda console: _render(console, result))
    exit_if_interrupted(result.status)  # 128 + signal: `&&` and afterok stop at a preempted run


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell ('-' for None / NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def render_status(console: Console, result: Any) -> None:
    """The lines every training command prints under its table."""
    if result.status == "interrupted":
        console.print(
            f"Interrupted at step {result.steps}; last.pt is saved. Rerun the same command to resume {result.run_dir}."
        )
    else:
        what = "stopped early" if result.stopped_early else "completed"
        console.print(
            f"Training {what}: {result.epochs} epochs, {result.steps} steps" + (" (resumed)" if result.resumed else "")
        )
        if result.model_dir is not None:
            console.print(f"Model: {result.model_dir}")
    console.print(
        f"{result.seconds:.1f} s, {result.samples_per_second:.1f} samples/s on {result.device}"
        + (f" x {result.world_size} ranks" if result.world_size > 1 else "")
    )


def _render(console: Console, result: Any) -> None:
    table = Table(title=f"{result.model} on {result.train_images} train / {result.val_images} val images")
    table.add_column("class")
    table.add_column("val AUC", justify="right")
    for label, auc in result.val_auc.items():
        table.add_row(label, fmt(auc))
    best = f"best epoch {result.best_epoch}" if result.best_epoch is not None else "no validation"
    table.add_row(f"mean ({best})", fmt(result.best_metric) if result.monitor == "val_auc" else "-")
    console.print(table)
    render_status(console, result)
