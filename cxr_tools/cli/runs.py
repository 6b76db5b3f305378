"""``cxr runs`` (alias ``cxr ls``): the datasets, caches, runs and evaluations in the workspace under CXR_HOME."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxr_tools.cli.common import ConfigOpt, JsonOpt, config_from_params, emit, handle_errors


def runs(
    ctx: typer.Context,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Only this kind: dataset, cache, run (every training run), train, train-siamese, meta-train or "
            "evaluate.",
            show_default="all",
        ),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only this status: completed, running, interrupted, failed or incomplete.",
            show_default="all",
        ),
    ] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List what the workspace holds ($CXR_DATA, $CXR_CACHE, $CXR_RUNS): kind, name, status, date, headline metric.

    A name is the path under the root of its kind (printed first; --json gives every full path), and the commands
    take it in place of the path: `cxr preprocess NAME`, `cxr meta-train CACHE-NAME`, `cxr evaluate RUN-NAME`,
    `cxr predict --model RUN-NAME`.
    """
    with handle_errors():
        from cxr_tools.engine.runs import RunsConfig, list_runs

        result = list_runs(config_from_params(RunsConfig, ctx.params))

    def render(console: Console) -> None:
        # A name is its path under the root of its kind (listed first); --json gives every full path.
        console.print(f"datasets {result.data}\ncaches   {result.cache}\nruns     {result.runs}", markup=False)
        table = Table()
        for column in ("kind", "name", "status", "date", "metric"):
            table.add_column(column, no_wrap=column != "name", overflow="fold")
        for e in result.entries:
            date = e.date[:16].replace("T", " ") if e.date else "-"
            table.add_row(e.kind, escape(e.name), e.status, date, e.metric or "-")
        if result.entries:
            console.print(table)
        else:
            console.print(
                "Nothing yet: start with `cxr download synthetic` (or another dataset), then `cxr preprocess`."
            )

    emit(result, json_output, render)
