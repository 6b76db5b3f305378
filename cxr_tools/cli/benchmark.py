"""``cxr benchmark run|status|report PLAN``: a paper's few-shot table (methods × shots × seeds) in one command.

The plan's command sections (``train:``, ``meta_train:``, ``evaluate:``...) hold the commands' own options: this
module hands the engine the flags of those commands, read from this very app, so a plan key is checked exactly
as the flag would be, and a step's command line spells it as a user would.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cxr_tools.cli.common import (
    ConfigOpt,
    JsonOpt,
    OverwriteOpt,
    QuietOpt,
    config_from_params,
    emit,
    exit_partial,
    handle_errors,
    output_option,
    progress_for,
    stderr_console,
)

app = typer.Typer(
    help="A paper's few-shot table from one plan file: train, evaluate and compare every method × shots × seed, "
    "locally or as SLURM jobs; then the table and plots.",
    no_args_is_help=True,
)

PlanArg = Annotated[Path, typer.Argument(help="Benchmark plan (YAML; see examples/benchmark/).", show_default=False)]
STEP_COMMANDS = ("train", "train-siamese", "meta-train", "evaluate")


@app.command("run")
def run(
    ctx: typer.Context,
    plan: PlanArg,
    executor: Annotated[
        str, typer.Option("--executor", help="local (subprocesses, in order) or slurm (sbatch jobs with dependencies).")
    ] = "local",
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition (else the plan's).")] = None,
    time: Annotated[str | None, typer.Option("--time", help="SLURM time limit per job, e.g. 04:00:00.")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", min=0, help="GPUs per SLURM job (else the plan's).")] = None,
    account: Annotated[str | None, typer.Option("--account", help="SLURM account (else the plan's).")] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run (or submit) every step of PLAN that is not done: a rerun skips finished steps, resumes interrupted
    ones and redoes those whose settings changed. Exit 3 when a step failed (its log is named; steps that do
    not depend on it still ran)."""
    with handle_errors():
        from cxr_tools.engine.benchmark import BenchmarkRunConfig, run_benchmark

        cfg = config_from_params(BenchmarkRunConfig, ctx.params)
        result = run_benchmark(cfg, progress_for(quiet), command_flags())

    def render(console: Console) -> None:
        console.print(
            f"{result.steps} steps in {result.output}: {len(result.skipped)} already done, {len(result.ran)} run, "
            f"{len(result.redone)} redone (settings changed)",
            markup=False,
        )
        for job, steps in result.jobs.items():
            console.print(f"submitted job {job}: {', '.join(steps)}", markup=False)
        for step in result.blocked:
            console.print(f"blocked (a step it needs failed): {step}", markup=False)

    emit(result, json_output, render)
    for step, reason in result.failed.items():
        stderr_console().print(f"failed: {step}: {reason}", markup=False)
    exit_partial(len(result.failed), "steps")


@app.command("status")
def status(
    ctx: typer.Context,
    plan: PlanArg,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """A table of PLAN's steps: pending / running / done / failed, with the reason and the log path."""
    with handle_errors():
        from cxr_tools.engine.benchmark import BenchmarkStatusConfig, benchmark_status

        result = benchmark_status(config_from_params(BenchmarkStatusConfig, ctx.params), command_flags())

    def render(console: Console) -> None:
        from rich import box
        from rich.table import Table

        table = Table(title=f"cxr benchmark: {result.output}", box=box.SIMPLE_HEAD)
        for name in ("step", "status", "reason", "log"):
            table.add_column(name, overflow="fold")
        styles = {"failed": "bold red", "running": "yellow", "done": "green"}
        for row in result.steps:
            table.add_row(
                row.id, row.status, row.reason, row.log if row.status != "pending" else "", style=styles.get(row.status)
            )
        console.print(table)
        console.print(", ".join(f"{n} {s}" for s, n in result.counts.items()), markup=False)

    emit(result, json_output, render)


@app.command("report")
def report(
    ctx: typer.Context,
    plan: PlanArg,
    output: Annotated[Path, output_option("Directory for report.{md,csv,json,html} and the plots.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """The table (method × shots, mean AUC with the seed-aware interval, best per column, significance against
    the reference after Holm), the AUC-vs-shots plot, a per-class heat map and the paired tests, all read from
    the plan's `cxr compare` outputs; as Markdown, CSV, JSON and a self-contained HTML page."""
    with handle_errors():
        from cxr_tools.engine.benchmark import BenchmarkReportConfig, benchmark_report

        result = benchmark_report(config_from_params(BenchmarkReportConfig, ctx.params), command_flags())

    def render(console: Console) -> None:
        from cxr_tools.benchmark.report import markdown

        console.print(markdown(result), markup=False)
        for path in result.files:
            console.print(f"wrote: {path}", markup=False)

    emit(result, json_output, render)


# --- the step commands' flags, from the app itself --------------------------------------------------------------


@functools.cache
def _step_commands() -> dict[str, Any]:
    from cxr_tools.cli.app import app as root

    commands = typer.main.get_command(root).commands  # type: ignore[attr-defined]
    return {name: commands[name] for name in STEP_COMMANDS}


def _spellings(param: Any) -> set[str]:
    return {param.name} | {o[2:].replace("-", "_") for o in param.opts if o.startswith("--")}


def command_flags() -> Any:
    """The :class:`~cxr_tools.benchmark.plan.CommandFlags` of the commands a plan's sections configure."""
    from cxr_tools.benchmark.plan import CommandFlags, Flag

    flags: dict[str, dict[str, Flag]] = {}
    for name, command in _step_commands().items():
        keys: dict[str, Flag] = {}
        for p in command.params:
            if not p.expose_value or p.is_eager or p.name in ("config", "help"):
                continue
            if p.param_type_name == "argument":
                keys[p.name] = Flag("")
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            off = next((o for o in p.secondary_opts if o.startswith("--")), None)
            flag = Flag(longs[0], off, bool(getattr(p, "is_bool_flag", False)), bool(p.multiple))
            keys.update({key: flag for key in _spellings(p)})
        flags[name] = keys
    from cxr_tools.models.encoders import is_encoder

    return CommandFlags(flags=flags, check=check_option, is_encoder=is_encoder)


@functools.cache
def _context(command: str) -> Any:
    return _step_commands()[command].make_context(command, [], resilient_parsing=True)


def check_option(command: str, key: str, value: Any) -> None:
    """Check a plan value as the flag ``--KEY`` of ``cxr COMMAND`` would be checked (types, ranges)."""
    from cxr_tools.config import cli_text
    from cxr_tools.errors import ConfigError

    cmd = _step_commands()[command]
    param = next(p for p in cmd.params if p.name and key in _spellings(p))
    if getattr(param, "is_bool_flag", False):
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}.")
        return
    text: Any = (
        [cli_text(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if param.multiple
        else cli_text(value)
    )
    ctx = _context(command)
    try:
        param.process_value(ctx, text)
    except typer.BadParameter as exc:
        raise ConfigError(exc.message) from None
