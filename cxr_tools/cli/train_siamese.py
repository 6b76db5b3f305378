"""``cxr train-siamese CACHE -o RUN --backbone NAME``: Siamese network, contrastive loss, L2-normalised embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    DryRunOpt,
    JsonOpt,
    QuietOpt,
    config_from_params,
    emit,
    emit_plan,
    exit_if_interrupted,
    handle_errors,
    progress_for,
)
from cxr_tools.cli.defaults import training_paths
from cxr_tools.cli.train import (
    CacheArg,
    RunOpt,
    fmt,
    render_status,
    split_classes,
    training_command,
)


@training_command
def train_siamese(
    ctx: typer.Context,
    cache: CacheArg = None,
    output: RunOpt = None,
    backbone: Annotated[str, typer.Option("--backbone", "-m", help="Zoo model of the twin network.")] = "resnet18",
    backbone_from: Annotated[
        Path | None,
        typer.Option(
            "--backbone-from",
            help="Start from the backbone of a finished `cxr train` / `cxr train-siamese` run (same architecture).",
            show_default=False,
        ),
    ] = None,
    embedding_dim: Annotated[int, typer.Option("--embedding-dim", min=1, help="Embedding size.")] = 256,
    margin: Annotated[float, typer.Option("--margin", help="Contrastive margin (distances lie in [0, 2]).")] = 1.0,
    distance: Annotated[str, typer.Option("--distance", help="cosine or euclidean.")] = "cosine",
    pair_rule: Annotated[
        str,
        typer.Option("--pair-rule", help="Positive pair: same-set (identical findings) or shares-finding."),
    ] = "same-set",
    views: Annotated[
        str, typer.Option("--views", help="Views allowed in pairs: comma-separated codes, or 'all'.")
    ] = "PA,AP,",
    pairs_per_epoch: Annotated[
        int | None,
        typer.Option("--pairs-per-epoch", min=1, help="Training pairs per epoch.", show_default="usable images"),
    ] = None,
    val_pairs: Annotated[int, typer.Option("--val-pairs", min=2, help="Size of the fixed validation pair set.")] = 1000,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    dry_run: DryRunOpt = False,
    **options: Any,
) -> None:
    """Train a Siamese network (Hadsell et al. contrastive loss) on balanced, patient-disjoint image pairs.

    Validation reports pair AUC and the accuracy at the similarity threshold chosen on the validation pairs
    (stored in the model card). Rerun the same command to resume; runs under torchrun as DDP.
    """
    with handle_errors():
        from cxr_tools.engine.train_siamese import SiameseConfig
        from cxr_tools.engine.train_siamese import train_siamese as engine

        training_paths(ctx, "train-siamese", backbone)
        cfg = config_from_params(
            SiameseConfig,
            ctx.params,
            classes=split_classes(options["classes"]),
            views=tuple(v.strip() for v in views.split(",")),
        )
        if dry_run:
            from cxr_tools.engine.train_siamese import plan_train_siamese

            emit_plan(plan_train_siamese(cfg), json_output)
            return
        result = engine(cfg, progress_for(quiet))

    if result.rank == 0:  # under torchrun every rank returns; one report
        emit(result, json_output, lambda console: _render(console, result))
    exit_if_interrupted(result.status)  # 128 + signal: `&&` and afterok stop at a preempted run


def _render(console: Console, result: Any) -> None:
    table = Table(
        title=f"Siamese {result.backbone} ({result.embedding_dim}-d, {result.distance}, margin {result.margin:g}, "
        f"{result.pair_rule}) on {result.train_images} train images"
    )
    table.add_column("validation (best epoch)")
    table.add_column("value", justify="right")
    table.add_row("pairs", str(result.val_pairs))
    table.add_row("pair AUC", fmt(result.val_pair_auc))
    table.add_row("similarity threshold", fmt(result.val_threshold, 4))
    table.add_row("accuracy at that threshold", fmt(result.val_accuracy))
    table.add_row("best epoch", str(result.best_epoch) if result.best_epoch is not None else "-")
    console.print(table)
    render_status(console, result)
