"""``cxr meta-train CACHE -o RUN``: MAML, first-order MAML or ProtoNet-ML on the meta-train classes of a cache."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    ImagesPerPatientOpt,
    JsonOpt,
    MetaSplitOpt,
    OverwriteOpt,
    PoolSeedOpt,
    QueriesOpt,
    QuietOpt,
    SeedOpt,
    ShotsOpt,
    ThreadsOpt,
    config_from_params,
    emit,
    emit_plan,
    exit_if_interrupted,
    handle_errors,
    progress_for,
)
from cxr_tools.cli.defaults import training_paths
from cxr_tools.cli.train import (
    AmpOpt,
    CacheArg,
    CkptMinutesOpt,
    CkptStepsOpt,
    LogEveryOpt,
    RequeueOpt,
    RunOpt,
    TrainResumeOpt,
)


def meta_train(
    ctx: typer.Context,
    cache: CacheArg = None,
    output: RunOpt = None,
    ways: Annotated[int, typer.Option("--ways", min=1, help="Classes per episode (N).")] = 2,
    shots: ShotsOpt = 5,
    queries: QueriesOpt = 10,
    images_per_patient: ImagesPerPatientOpt = 1,
    inner_lr: Annotated[float, typer.Option("--inner-lr", help="Step size of the inner (adaptation) SGD steps.")] = (
        0.01
    ),
    meta_lr: Annotated[float, typer.Option("--meta-lr", help="Adam learning rate of the meta-update.")] = 0.0001,
    adapt_steps: Annotated[int, typer.Option("--adapt-steps", min=0, help="Inner SGD steps per episode.")] = 5,
    meta_batch: Annotated[int, typer.Option("--meta-batch", min=1, help="Episodes per meta-step.")] = 4,
    episodes: Annotated[
        int,
        typer.Option(
            "--episodes", min=1, help="Meta-training budget in episodes; ceil(episodes / meta-batch) meta-steps."
        ),
    ] = 20000,
    algorithm: Annotated[
        str,
        typer.Option(
            "--algorithm",
            help="maml, fomaml (first-order MAML: faster, lighter, approximate) or protonet (ProtoNet-ML, MetaChest's "
            "multi-label prototypical network: trains the embedding; evaluated with prototypes).",
        ),
    ] = "maml",
    first_order: Annotated[
        bool, typer.Option("--first-order", help="Same as --algorithm fomaml (kept for older scripts and configs).")
    ] = False,
    backbone: Annotated[
        str | None,
        typer.Option(
            "--backbone", help="Zoo model (see `cxr models`); default conv4 or the --init run's.", show_default=False
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from a run's backbone (supervised, Siamese or MAML run directory) or 'imagenet'.",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="auto (learn2learn when installed, else func), learn2learn, higher, func, or vmap (a meta-batch's "
            "tasks as one batched computation; same meta-gradient).",
        ),
    ] = "auto",
    meta_split: MetaSplitOpt = "auto",
    pool_seed: PoolSeedOpt = 0,
    val_every: Annotated[int, typer.Option("--val-every", min=1, help="Meta-steps between validations.")] = 100,
    val_episodes: Annotated[
        int, typer.Option("--val-episodes", min=0, help="Fixed meta-val episodes per validation (0 = none).")
    ] = 100,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    amp: AmpOpt = False,
    grad_clip: Annotated[
        float | None, typer.Option("--grad-clip", help="Clip the meta-gradient's norm.", show_default=False)
    ] = None,
    log_every_steps: LogEveryOpt = 10,
    checkpoint_every_steps: CkptStepsOpt = None,
    checkpoint_every_minutes: CkptMinutesOpt = 10.0,
    resume: TrainResumeOpt = True,
    overwrite: OverwriteOpt = False,
    requeue: RequeueOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Meta-learn on the meta-train classes (MAML / FOMAML: an initialisation; ProtoNet-ML: an embedding scored by
    class prototypes); validate on the meta-val classes.

    Episodes: N classes, K positives per class plus K negatives (none of the N) in the support set, Q likewise
    in the query set, multi-hot BCE targets. Meta-test classes and images are never used. Writes RUN/model/
    (best meta-val AUC), RUN/meta_split.json, metrics.jsonl and checkpoints; rerun the same command to resume.
    """
    with handle_errors():
        from cxr_tools.engine.meta_train import MetaTrainConfig
        from cxr_tools.engine.meta_train import meta_train as run_meta_train

        training_paths(ctx, "meta-train", ("protonet-" if algorithm == "protonet" else "") + f"{ways}w{shots}s")
        cfg = config_from_params(MetaTrainConfig, ctx.params)
        if dry_run:
            from cxr_tools.engine.meta_train import plan_meta_train

            emit_plan(plan_meta_train(cfg), json_output)
            return
        result = run_meta_train(cfg, progress_for(quiet))

    emit(result, json_output, lambda console: _render(console, result))
    if result.status != "completed":
        sys.stderr.write(
            f"Interrupted at meta-step {result.meta_steps}/{result.total_meta_steps}; last.pt is saved. "
            "Rerun the same command to resume.\n"
        )
    exit_if_interrupted(result.status)  # 128 + signal: `&&` and afterok stop at a preempted run
    if result.unusable:
        c = result.collapse or {}
        sys.stderr.write(
            f"Meta-training collapsed to the label prior at meta-step {c['from_step']} (loss {c['loss']:.4f} vs the "
            f"prior's {c['prior_loss']:.4f}) and no weights beat the prior on meta-validation: {result.run_dir} "
            "is not a usable model. Lower --meta-lr"
            + (".\n" if result.algorithm == "protonet" else ", or raise --inner-lr / --adapt-steps.\n")
        )
        raise typer.Exit(1)


def _render(console: Console, result: Any) -> None:
    table = Table(title=f"cxr meta-train: {result.run_dir} ({result.status})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    split = result.meta_split
    table.add_row("algorithm", result.algorithm)
    if result.algorithm != "protonet":
        table.add_row("engine", result.engine)
    table.add_row("meta-steps", f"{result.meta_steps}/{result.total_meta_steps} ({result.episodes_seen} episodes)")
    table.add_row("meta-train classes", ", ".join(split["train"]))
    table.add_row("meta-val classes", ", ".join(split["val"]))
    table.add_row("meta-test classes (unused)", ", ".join(split["test"]))
    table.add_row("pool images train/val/test", "/".join(str(result.pool_sizes[k]) for k in ("train", "val", "test")))
    if result.best_val_auc is not None:
        table.add_row("best meta-val AUC", f"{result.best_val_auc:.4f} (meta-step {result.best_step})")
    if result.validation:
        table.add_row("weights selected by", str(result.validation.get("selection")))
    if result.collapse is not None:
        c = result.collapse
        back = c.get("recovered_at_step")
        table.add_row(
            "COLLAPSED",
            f"to the label prior from meta-step {c['from_step']}"
            + (f", recovered at {back}" if back else ", never recovered"),
        )
    table.add_row("tasks/s", f"{result.tasks_per_second:.2f}")
    table.add_row("seconds", f"{result.seconds:.1f}")
    if result.model_dir is not None:
        table.add_row("model", f"{result.model_dir} ({result.selected} weights)")
    console.print(table)
