"""``cxr compare RUN_OR_EVAL_DIR...``: ranked table, paired differences against the best, a one-line verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import ConfigOpt, JsonOpt, OverwriteOpt, emit, handle_errors, make_config


def compare(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation directories (cxr evaluate -o) or runs evaluated into RUN/eval.", show_default=False
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write comparison.csv, comparison.md, comparison.png and comparison.json here.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="Ranking metric: auc, ap, f1, precision or recall.")] = "auc",
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Rank evaluations made on the same episodes; paired differences (95% CI, p) against the best method.

    Refuses evaluations of different episode lists (it names each one and its hash): their numbers are not
    comparable episode by episode.
    """
    with handle_errors():
        from cxr_tools.engine.compare import CompareConfig
        from cxr_tools.engine.compare import compare as run_compare

        cfg = make_config(
            ctx,
            CompareConfig,
            config,
            "compare",
            inputs=tuple(inputs),
            output=output,
            metric=metric,
            overwrite=overwrite,
        )
        result = run_compare(cfg)

    emit(result, json_output, lambda console: render(console, result))


def render(console: Console, result: Any) -> None:
    """The ranked table, then the verdict and the files."""
    name = result.metric.upper() if result.metric in ("auc", "ap") else result.metric
    table = Table(title=f"cxr compare: {result.episodes} shared episodes (list {result.episode_list_hash})")
    table.add_column("rank", justify="right")
    table.add_column("method")
    table.add_column("kind")
    table.add_column(f"{name} ± 95% CI", justify="right")
    table.add_column("Δ vs best [95% CI]", justify="right")
    table.add_column("p", justify="right")
    for cls in result.classes:
        table.add_column(cls, justify="right")
    for row in result.rows:
        if row.diff is None:
            diff, p = "—", "—"
        else:
            ci = row.diff_ci95 if row.diff_ci95 is not None else float("nan")
            diff = f"{row.diff:+.3f} [{row.diff - ci:+.3f}, {row.diff + ci:+.3f}]"
            p = "n/a" if row.p_value != row.p_value else ("<0.001" if row.p_value < 0.001 else f"{row.p_value:.3f}")
            if not row.significant:
                p += " (n.s.)"
        per = [_mean(row.per_class.get(c)) for c in result.classes]
        table.add_row(str(row.rank), row.name, row.kind or "-", f"{row.mean:.3f} ± {row.ci95:.3f}", diff, p, *per)
    console.print(table)
    console.print(result.verdict)
    for path in result.files:
        console.print(f"wrote: {path}")


def _mean(value: Any) -> str:
    if not value or value.get("mean") != value.get("mean"):
        return "n/a"
    return f"{value['mean']:.3f}"
