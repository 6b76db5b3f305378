"""What every command shares: consoles, options, config resolution, error handling, output.

Conventions (DESIGN.md §4): results on stdout, progress and logs on stderr; a :class:`CxrError` becomes one
line on stderr and exit 1 (``CXR_DEBUG=1`` adds the traceback); usage errors exit 2 (Typer); partial success
exits 3; Ctrl-C exits 130.
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
from cxr_tools.errors import CxrError
from cxr_tools.runtime.progress import Progress

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

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


# --- shared options -------------------------------------------------------------------------------------
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of option values; flags given on the command line win.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a complete existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an incomplete output.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice (same seed, same result).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Worker processes (0 = in this process).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn library errors into the exit codes of DESIGN.md §4."""
    try:
        yield
    except CxrError as exc:
        if os.environ.get("CXR_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        sys.stderr.write(f"Error: {exc}\n")
        sys.stderr.flush()
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def given_flags(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user typed (or set through an environment variable)."""
    given: set[str] = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in {"COMMANDLINE", "ENVIRONMENT"}:
            given.add(name)
    return given


def make_config(
    ctx: typer.Context, cls: type[T], config_file: Path | None, command: str | None = None, **values: Any
) -> T:
    """Build the engine config: dataclass defaults < ``--config`` YAML < flags actually given."""
    import dataclasses

    yaml_values: dict[str, Any] = {}
    if config_file is not None:
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        yaml_values = cfg.section(cfg.load_yaml(config_file), command or ctx.info_name or "", known)
    return cfg.build(cls, values, given_flags(ctx), yaml_values)


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


def exit_partial(failed: int, what: str) -> None:
    """Exit 3 when some inputs failed (each already reported)."""
    if failed:
        sys.stderr.write(f"Partial success: {failed} {what} failed (see the report above).\n")
        raise typer.Exit(EXIT_PARTIAL)
