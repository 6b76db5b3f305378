"""``cxr compare RUN_OR_EVAL_DIR...``: ranked table, Holm-adjusted paired differences, a one-line verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    JsonOpt,
    OverwriteOpt,
    config_from_params,
    emit,
    handle_errors,
    output_option,
)


def compare(
    ctx: typer.Context,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation directories (cxr evaluate -o) or runs evaluated into RUN/eval.", show_default=False
        ),
    ],
    output: Annotated[
        Path | None, output_option("Write comparison.csv, comparison.md, comparison.png and comparison.json here.")
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="Ranking metric: auc, ap, f1, precision or recall; on generalized evaluations (--seen-ways) "
            "also auc-seen, auc-unseen, auc-harmonic (any metric before the dash).",
        ),
    ] = "auc",
    groups: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            help="NAME=RUN,RUN,...: runs of one method that differ only in seed (repeatable; added to the inputs).",
            show_default=False,
        ),
    ] = None,
    auto_group: Annotated[
        bool,
        typer.Option(
            "--auto-group/--no-auto-group",
            help="Group evaluations of runs whose configs differ only in the seed.",
        ),
    ] = True,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Test every method against this one (its name or path) instead of all pairs.",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Rank evaluations made on the same episodes; paired differences (95% CI, Holm-adjusted p) for all pairs.

    Runs that differ only in the training seed are grouped (or --group): their scores are averaged over seeds and
    their interval includes the between-seed variance. Refuses evaluations of different episode lists, caches or
    old (not patient-disjoint) episode lists, naming what differs.
    """
    with handle_errors():
        from cxr_tools.engine.compare import CompareConfig
        from cxr_tools.engine.compare import compare as run_compare

        cfg = config_from_params(CompareConfig, ctx.params, inputs=tuple(inputs), groups=tuple(groups or ()))
        result = run_compare(cfg)

    emit(result, json_output, lambda console: render(console, result))


def render(console: Console, result: Any) -> None:
    """The ranked table (per-class columns when the console is wide enough), then the verdict and the files."""
    from rich import box
    from rich.markup import escape

    from cxr_tools.engine.compare.output import LEAK_MARK, diff_text, interval_text, metric_name, p_cell

    name = metric_name(result.metric, result.threshold)
    names = [escape(f"{row.name} {LEAK_MARK}" if row.leak else row.name) for row in result.rows]
    budget_width = max([len("budget"), *(len(row.budget) for row in result.rows)])
    base = max(len(n) for n in names) + 76
    show_budget = console.width >= base + budget_width + 3
    class_width = sum(max(len(c), 5) + 3 for c in result.classes)  # header or value, plus padding
    extra = budget_width + 3 if show_budget else 0
    classes = list(result.classes) if console.width >= base + extra + class_width else []
    table = Table(
        title=f"cxr compare: {name}, mean [95% CI] over {result.episodes} shared episodes",
        caption=f"episode list {result.episode_list_hash}; Δ = method − {escape(result.reference)}, paired over "
        f"episodes; Δ intervals per comparison (they exclude 0 exactly when the raw p < 0.05); p Holm-adjusted over "
        f"one family of {len(result.tests)} tests (overall and per class); * per class: significant",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("method", no_wrap=True)
    if show_budget:
        table.add_column("budget", no_wrap=True)
    table.add_column(name, justify="right", no_wrap=True)
    table.add_column("Δ [95% CI]", justify="right", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    for cls in classes:
        table.add_column(cls, justify="right", no_wrap=True)
    for row, label in zip(result.rows, names, strict=True):
        if row.diff is None:
            diff, p = "—", "—"
        else:
            diff = diff_text(row.diff, row.diff_low, row.diff_high)
            p = p_cell(row.p_value, "identical" if row.note.startswith("identical") else "")
            if not row.significant:
                p += " n.s."
        cells = [str(row.rank), label, *([escape(row.budget or "-")] if show_budget else [])]
        cells += [interval_text(row.mean, row.low, row.high), diff, p, *[_mean(row.per_class.get(c)) for c in classes]]
        table.add_row(*cells, style="bold red" if row.leak else None)
    console.print(table)
    if len(classes) < len(result.classes):
        console.print("(per-class values and tests: comparison.md / comparison.csv, or widen the terminal)")
    for note in getattr(result, "notes", ()):
        console.print(f"Note: {note}.", markup=False)
    for row in result.rows:
        if row.note and "one seed" in row.note:
            console.print(f"{row.name}: {row.note}", markup=False)
        if len(row.eval_dirs) > 1:
            console.print(
                f"{row.name}: {len(row.eval_dirs)} seeds averaged; interval includes between-seed variance",
                markup=False,
            )
        if row.leak:
            console.print(f"{LEAK_MARK} {row.name}: {row.leak}", markup=False)
    _print_all_metrics(console, result, names)
    console.print(result.verdict, markup=False)
    for path in result.files:
        console.print(f"wrote: {path}")


def _print_all_metrics(console: Console, result: Any, names: list[str]) -> None:
    """Every metric's mean per method: AUC and AP first, then F1 / precision / recall named with the rule."""
    from rich import box

    from cxr_tools.engine.compare.output import metric_columns, rule_note

    columns = metric_columns(result)
    if len(columns) < 2:
        return
    width = max(len(n) for n in names) + 4 + sum(max(len(h), 5) + 3 for _, h in columns)
    narrow = console.width < width
    if narrow:  # keep AUC, AP and F1 whole rather than cut every header
        columns = [(m, h) for m, h in columns if m in ("auc", "ap", "f1")]
    table = Table(title="all metrics, mean over episodes", box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True)
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row, label in zip(result.rows, names, strict=True):
        values = [row.others.get(m) for m, _ in columns]
        table.add_row(label, *["n/a" if v is None or v != v else f"{v:.3f}" for v in values])
    if result.all_positive:  # the no-skill reference of the thresholded metrics
        ref = [result.all_positive.get(m) for m, _ in columns]
        table.add_row("(every query positive)", *["—" if v is None else f"{v:.3f}" for v in ref], style="dim")
    console.print(table)
    if narrow:
        console.print("(precision and recall: comparison.md / comparison.csv, or widen the terminal)")
    console.print(rule_note(result), markup=False, soft_wrap=True)


def _mean(value: Any) -> str:
    if not value or value.get("mean") != value.get("mean"):
        return "n/a"
    star = "*" if value.get("significant") else ""
    return f"{value['mean']:.3f}{star}"
