"""``cxr stats CACHE``: label counts, patients, splits, views, co-occurrence; PNG plots; ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import ConfigOpt, JsonOpt, build_config, emit, handle_errors, output_option, progress_for


def stats(
    cache: Annotated[Path, typer.Argument(help="Cache directory written by `cxr preprocess`.", show_default=False)],
    output: Annotated[
        Path | None,
        output_option(
            "Directory for label_counts.png, cooccurrence.png and stats.json.", "--out", show_default="CACHE/stats"
        ),
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots.")] = True,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Instead of statistics, check every file of the cache against the checksums recorded when it was "
            "written (reads all images): one line per damaged file on stderr, exit 1 if any.",
        ),
    ] = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Label and patient statistics of a cache, read from its index alone (never the images).

    Images and patients per label and per split, uncertain counts (CheXpert), labels per image, split
    sizes, views, and the label co-occurrence matrix; plots are rewritten on every run.
    """
    if verify:
        _verify(cache, json_output)
        return
    with handle_errors():
        from cxr_tools.engine.stats import StatsConfig, run_stats

        cfg = build_config(StatsConfig, cache=cache, out=output, plots=plots)
        result = run_stats(cfg, progress_for())

    def render(console: Console) -> None:
        _render(console, result)

    emit(result, json_output, render)


def _verify(cache: Path, json_output: bool) -> None:
    """``--verify``: the damaged files on stderr, one line each, and exit 1; a one-line all-clear otherwise."""
    import sys

    with handle_errors():
        from cxr_tools.engine.stats import verify

        result = verify(cache)
    for line in result.damaged:
        sys.stderr.write(f"Damaged: {line}\n")

    def render(console: Console) -> None:
        if not result.damaged:
            console.print(f"{result.cache}: every file matches its checksums ({result.images} images).")

    emit(result, json_output, render)
    if result.damaged:
        raise typer.Exit(1)


def _render(console: Console, result: Any) -> None:
    split_names = list(result.splits)
    table = Table(title=f"Labels of {result.cache} ({result.n_images} images, {result.n_patients} patients)")
    table.add_column("label")
    table.add_column("images", justify="right")
    table.add_column("patients", justify="right")
    show_uncertain = any(s.uncertain for s in result.labels)
    if show_uncertain:
        table.add_column("uncertain", justify="right")
    for name in split_names:
        table.add_column(f"{name} img/pat", justify="right")
    for s in result.labels:
        row = [s.label, str(s.images), str(s.patients)]
        if show_uncertain:
            row.append(str(s.uncertain))
        row += [f"{s.split_images[n]}/{s.split_patients[n]}" for n in split_names]
        table.add_row(*row)
    table.add_row("(no positive label)", str(result.no_positive_images), "", *[""] * (len(table.columns) - 3))
    console.print(table)

    splits = Table(title="Splits")
    splits.add_column("split")
    splits.add_column("images", justify="right")
    splits.add_column("patients", justify="right")
    for name, s in result.splits.items():
        splits.add_row(name, str(s.images), str(s.patients))
    console.print(splits)
    if result.datasets:
        datasets = Table(title="Datasets")
        for col in ("dataset", "images", "patients", *split_names):
            datasets.add_column(col, justify="left" if col == "dataset" else "right")
        for name, d in result.datasets.items():
            datasets.add_row(name, str(d.images), str(d.patients), *(str(d.splits.get(s, 0)) for s in split_names))
        console.print(datasets)

    small = Table(title="Labels per image / views")
    small.add_column("positive labels")
    small.add_column("images", justify="right")
    small.add_column("view")
    small.add_column("images ", justify="right")
    hist = list(result.labels_per_image.items())
    views = list(result.views.items())
    for i in range(max(len(hist), len(views))):
        k, v = hist[i] if i < len(hist) else ("", "")
        view, count = views[i] if i < len(views) else ("", "")
        small.add_row(str(k), str(v), str(view), str(count))
    console.print(small)
    for path in result.plots:
        console.print(f"plot: {path}")
    if result.out is not None:
        console.print(f"statistics: {Path(result.out) / 'stats.json'}")
