"""What every command shares: consoles, options, config resolution, error handling, output.

Conventions (the CLI contract in docs/design.md): results on stdout, progress and logs on stderr; a
:class:`CxrError` becomes one line on stderr and exit 1 (``CXR_DEBUG=1`` adds the traceback); usage errors,
including a bad ``--config`` file, exit 2 (Typer); partial success exits 3; a command stopped by a signal
exits 128 + its number after its checkpoint (Ctrl-C 130, SIGTERM 143, SIGUSR1 138): :data:`EXIT_CODES_EPILOG`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from cxr_tools import config as cfg
from cxr_tools.errors import ConfigError, CxrError
from cxr_tools.runtime.progress import Progress

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130  # SIGINT; any stop signal N exits 128 + N (runtime.signals.exit_code_for)

#: The ``--help`` epilog of every command: what a shell script or a SLURM dependency can rely on.
EXIT_CODES_EPILOG = (
    "Exit codes: 0 done; 1 error (one line on stderr; also a locked or foreign -o directory); 2 usage; "
    "3 partial success; 130 stopped by Ctrl-C, 143 by SIGTERM, 138 by SIGUSR1 (128 + signal; the output is "
    "checkpointed and marked interrupted, rerun the same command to resume; also after --requeue)."
)

T = TypeVar("T")


# Consoles are created lazily so tests (CliRunner swaps sys.stdout/err) and NO_COLOR are honoured per call.
def stdout_console() -> Console:
    # Piped or redirected output (scripts, SLURM logs) gets a wide table rather than Rich's 80-column default,
    # so cells are not cut with "…"; an explicit COLUMNS still wins.
    console = Console(file=sys.stdout, soft_wrap=True)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(file=sys.stdout, soft_wrap=True, width=200)
    return console


def stderr_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True)


# --- --config and the user config: YAML values become the command's defaults ------------------------------
def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Eager ``--config`` callback: the user config's values for this command, then the file's, become its
    ``default_map``.

    Click calls it on every run of a command (with ``value`` None when no ``--config`` is given), before any
    other option, so the user config ``$CXR_HOME/config.yaml`` applies to every command the same way:
    flags > ``--config`` > user config > built-in defaults. Click then parses each value exactly as the flag's
    text (types, ``min=``/``max=``, choices, callbacks), and a flag typed on the command line still wins.
    Positional arguments may be set too (``cache: PATH``), so a saved ``RUN/config.yaml`` names everything a
    rerun needs. Every value is checked here, so a bad file fails before anything runs, as a usage error
    (exit 2) naming the key and the file. The files a value came from are kept in ``ctx.meta`` (see
    :func:`config_source`).
    """
    if ctx.resilient_parsing:
        return value
    from cxr_tools.paths import user_config

    files = [f for f in (user_config(), value) if f is not None and (f is value or f.is_file())]
    if not files:
        return value
    params = {p.name: p for p in ctx.command.params if p.name is not None and _configurable(p)}
    defaults: dict[str, Any] = {}
    sources: dict[str, Path] = {}
    try:
        options = _app_options(ctx)
        for file in files:
            values = cfg.select(cfg.load_yaml(file), ctx.info_name or "", options, str(file))
            for name, raw in values.items():
                if raw is None:  # YAML null: the option's own default
                    defaults.pop(name, None)
                    continue
                try:
                    defaults[name], sources[name] = _as_flag_text(ctx, params[name], raw), file
                except (ConfigError, typer.BadParameter) as exc:
                    detail = exc.message if isinstance(exc, typer.BadParameter) else str(exc)
                    raise ConfigError(f"Invalid value for '{name}' in {file}: {detail}") from None
    except ConfigError as exc:
        ctx.fail(str(exc))
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["cxr_config_sources"] = {k: v for k, v in sources.items() if k in defaults}
    return value


def config_source(ctx: typer.Context, name: str) -> str:
    """Where parameter ``name``'s value came from, in words: its flag, its environment variable, a config file
    (named), or the built-in default."""
    source = ctx.get_parameter_source(name)
    kind = source.name if source is not None else "DEFAULT"
    param = next((p for p in ctx.command.params if p.name == name), None)
    flag = next((o for o in getattr(param, "opts", []) if o.startswith("--")), None)
    if kind == "COMMANDLINE":
        return flag or "the command line"
    if kind == "ENVIRONMENT":
        return str(getattr(param, "envvar", None) or "the environment")
    if kind == "DEFAULT_MAP":
        from cxr_tools.paths import user_config

        file = ctx.meta.get("cxr_config_sources", {}).get(name)
        return f"{'the user config' if file == user_config() else '--config'} {file}"
    return "the default"


def _as_flag_text(ctx: typer.Context, param: Any, raw: Any) -> Any:
    """A YAML value as the flag's text (a list of texts for a repeatable one), checked as the flag would be."""
    if param.multiple or param.nargs == -1:
        text: Any = [cfg.cli_text(v) for v in (raw if isinstance(raw, (list, tuple)) else [raw])]
    else:
        text = cfg.cli_text(raw)
    param.process_value(ctx, text)
    return text


def _configurable(param: Any) -> bool:
    return bool(param.expose_value) and not param.is_eager and param.name != "config"


def _keys(params: Any) -> dict[str, str]:
    """A command's config keys: each parameter's name and its long flags without dashes, ``-`` as ``_``."""
    keys: dict[str, str] = {}
    for p in params:
        if p.name is None or not _configurable(p):
            continue
        keys[p.name] = p.name
        for flag in p.opts:
            if flag.startswith("--"):
                keys[flag[2:].replace("-", "_")] = p.name
    return keys


def _app_options(ctx: typer.Context) -> dict[str, dict[str, str]]:
    """Config keys of every command of the app, by command name (what a pipeline-wide file may hold)."""
    options: dict[str, dict[str, str]] = {}

    def walk(command: Any, name: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for sub_name, sub in subcommands.items():
                walk(sub, sub_name)
        else:
            options.setdefault(name, {}).update(_keys(command.params))

    walk(ctx.find_root().command, ctx.find_root().info_name or "")
    options[ctx.info_name or ""] = _keys(ctx.command.params)
    return options


# --- shared options: one spelling per concept in every command ----------------------------------------
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of option values (top level or under a section named after the command); flags given "
        "on the command line win.",
        show_default=False,
        is_eager=True,
        callback=_load_config,
        exists=True,
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a complete existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an incomplete output.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice (same seed, same result).")]
PoolSeedOpt = Annotated[
    int, typer.Option("--pool-seed", help="Seed distributing the negative patients over the meta-split pools.")
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Worker processes (0 = in this process).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="CPU threads for torch.", show_default="torch's default")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the plan (data, model, steps, output folder, device) and the estimated time from a few units "
        "timed in memory; run nothing, write nothing.",
    ),
]
MetaSplitOpt = Annotated[
    str,
    typer.Option(
        "--meta-split",
        help="auto (a saved split, else MetaChest), metachest, a YAML/JSON file or 'train=A,B;val=C;test=D,E'.",
    ),
]
# The episode shape (meta-train's tasks, evaluate's meta-test episodes).
ShotsOpt = Annotated[
    int, typer.Option("--shots", min=1, help="Support positives per class, plus as many negatives (K).")
]
QueriesOpt = Annotated[int, typer.Option("--queries", min=1, help="Query positives per class, plus as many negatives.")]
ImagesPerPatientOpt = Annotated[
    int,
    typer.Option(
        "--images-per-patient",
        min=1,
        help="Most images one patient contributes to an episode (support and query never share a patient).",
    ),
]


def output_option(help: str, *old_names: str, show_default: bool | str = False) -> Any:
    """``--output/-o`` with a command's own help; ``old_names`` keep a former spelling working."""
    return typer.Option("--output", *old_names, "-o", help=help, show_default=show_default)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn library errors into the exit codes of the CLI contract (docs/design.md), for the command's duration.

    SIGTERM / SIGUSR1 stop the command like Ctrl-C (runtime/signals.py ``stop_on_signals``; a trainer polls its
    own handler instead) and exit 128 + the signal; output locks taken by the command are released at the end.
    """
    from cxr_tools.runtime import locks, signals

    signals.reset_received()
    try:
        with locks.scope(), signals.stop_on_signals():
            try:
                yield
            except (OSError, RuntimeError) as exc:
                _raise_if_no_space(exc, locks.held_outputs())
                raise
    except CxrError as exc:
        if os.environ.get("CXR_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        sys.stderr.write(f"Error: {exc}\n")
        sys.stderr.flush()
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        signum = int(getattr(exc, "signum", signals.signal.SIGINT))
        sys.stderr.write(f"Interrupted by {signals.signal.Signals(signum).name}; rerun the same command to resume.\n")
        raise typer.Exit(signals.exit_code_for(signum)) from None


def _raise_if_no_space(exc: OSError | RuntimeError, outputs: list[Path]) -> None:
    """A full disk that no engine named (a journal append, a library's own write) is still one line: it names the
    output the command was writing (the last one it locked), else the file the error names."""
    from cxr_tools.runtime.space import is_no_space, no_space_error

    where = outputs[-1] if outputs else getattr(exc, "filename", None)
    if is_no_space(exc):  # by its errno or text only: the free-space test is for writes (runtime.fs.atomic_path)
        raise no_space_error(where or "the output's file system") from exc


def exit_if_interrupted(status: str | None = None) -> None:
    """Exit 128 + the signal when one stopped the command (a trainer returns normally, status ``interrupted``,
    after its checkpoint and any ``--requeue``), so ``&&`` chains and ``afterok`` stop at an unfinished run."""
    from cxr_tools.runtime import signals

    signum = signals.received_signal()
    if status == "interrupted" and signum is None:
        signum = int(signals.signal.SIGTERM)  # stopped by a signal another rank received
    if signum is not None and status != "completed":
        raise typer.Exit(signals.exit_code_for(signum))


def build_config(cls: type[T], **values: Any) -> T:
    """The engine config from the command's parameters (already layered: defaults < ``--config`` < flags)."""
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"Invalid configuration for {cls.__name__}: {exc}") from exc


def config_from_params(cls: type[T], params: dict[str, Any], **overrides: Any) -> T:
    """The engine config from a command's parameters (``ctx.params``): each parameter named like a field of
    ``cls`` sets it, so a command and its config cannot drift apart field by field; ``overrides`` set the fields
    whose flag is spelled or typed otherwise (``dest=output``, a comma list as a tuple). Parameters that are no
    field (``--config``, ``--json``, ``--quiet``) stay with the CLI."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {name: value for name, value in params.items() if name in fields}
    return build_config(cls, **{**values, **overrides})


def progress_for(quiet: bool = False) -> Progress:
    """The progress reporter for this invocation (Rich on a terminal, plain lines otherwise)."""
    from cxr_tools.cli.progress import make_progress

    return make_progress(stderr_console(), quiet=quiet or _global_quiet())


def _global_quiet() -> bool:
    return logging.getLogger("cxr_tools").getEffectiveLevel() > logging.INFO and bool(os.environ.get("CXR_QUIET"))


def emit(result: Any, as_json: bool, render: Callable[[Console], None]) -> None:
    """Print ``result``: as JSON when asked, otherwise through ``render`` on the stdout console."""
    if as_json:
        sys.stdout.write(cfg.to_json(result) + "\n")
    else:
        render(stdout_console())


def emit_plan(plan: Any, as_json: bool) -> None:
    """Print a ``--dry-run`` :class:`~cxr_tools.runtime.estimate.RunPlan`: a table and the estimate, or JSON."""
    if as_json:
        sys.stdout.write(cfg.to_json(plan) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"cxr {plan.command} --dry-run: the plan (nothing was written)", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for what, value in plan.plan:
        table.add_row(what, value)
    table.add_row("output folder", str(plan.output))
    table.add_row("device", plan.device)
    estimate = plan.estimate.message() if plan.estimate is not None else "none (the run's length is not known)"
    table.add_row("time", estimate)
    stdout_console().print(table)


def exit_partial(failed: int, what: str) -> None:
    """Exit 3 when some inputs failed (each already reported)."""
    if failed:
        sys.stderr.write(f"Partial success: {failed} {what} failed (see the report above).\n")
        raise typer.Exit(EXIT_PARTIAL)
