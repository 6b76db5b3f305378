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
    """The ranked table (per-class columns when the console is wide enough), then the verdict and the files."""
    from rich import box

    name = result.metric.upper() if result.metric in ("auc", "ap") else result.metric
    longest = max(len(row.name) for row in result.rows)
    base = longest + 76
    show_kind = console.width >= base + 12
    class_width = sum(max(len(c), 5) + 3 for c in result.classes)  # header or value, plus padding
    classes = list(result.classes) if console.width >= base + 12 + class_width else []
    table = Table(
        title=f"cxr compare: {name}, mean ± 95% CI over {result.episodes} shared episodes",
        caption=f"episode list {result.episode_list_hash}; Δ = method − best, paired over episodes",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("method", no_wrap=True)
    if show_kind:
        table.add_column("kind", no_wrap=True)
    table.add_column(name, justify="right", no_wrap=True)
    table.add_column("Δ vs best [95% CI]", justify="right", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    for cls in classes:
        table.add_column(cls, justify="right", no_wrap=True)
    for row in result.rows:
        if row.diff is None:
            diff, p = "—", "—"
        else:
            ci = row.diff_ci95 if row.diff_ci95 is not None else float("nan")
            diff = f"{row.diff:+.3f} [{row.diff - ci:+.3f}, {row.diff + ci:+.3f}]"
            p = "n/a" if row.p_value != row.p_value else ("<0.001" if row.p_value < 0.001 else f"{row.p_value:.3f}")
            if not row.significant:
                p += " n.s."
        cells = [str(row.rank), row.name, *([row.kind or "-"] if show_kind else [])]
        cells += [f"{row.mean:.3f} ± {row.ci95:.3f}", diff, p, *[_mean(row.per_class.get(c)) for c in classes]]
        table.add_row(*cells)
    console.print(table)
    if len(classes) < len(result.classes):
        console.print("(per-class values: comparison.md / comparison.csv, or widen the terminal)")
    console.print(result.verdict)
    for path in result.files:
        console.print(f"wrote: {path}")


def _mean(value: Any) -> str:
    if not value or value.get("mean") != value.get("mean"):
        return "n/a"
    return f"{value['mean']:.3f}"
