"""The ``cxr`` Typer application.

Only commands that work are registered. Each command lives in its own module and imports its engine
inside the command body, so ``cxr --help`` never imports torch, cv2, h5py, sklearn or learn2learn.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from cxr_tools import __version__
from cxr_tools.cli import (
    benchmark,
    compare,
    demo,
    download,
    evaluate,
    meta_train,
    models,
    predict,
    preprocess,
    runs,
    similarity,
    stats,
    train,
    train_siamese,
    webapp,
)
from cxr_tools.cli.common import EXIT_CODES_EPILOG

app = typer.Typer(
    name="cxr",
    help="Few-shot chest X-ray classification: download, preprocess, train, meta-train, evaluate, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxr-tools {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress.")] = False,
) -> None:
    """cxr-tools: few-shot chest X-ray classification from the command line."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    if quiet:
        os.environ["CXR_QUIET"] = "1"
    _configure_logging(level)


def _configure_logging(level: int) -> None:
    logger = logging.getLogger("cxr_tools")
    logger.setLevel(level)
    for h in list(logger.handlers):
        if getattr(h, "_cxr", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler._cxr = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


app.add_typer(download.app, name="download")
app.add_typer(benchmark.app, name="benchmark")
app.command("demo")(demo.demo)
app.command("preprocess")(preprocess.preprocess)
app.command("models")(models.models)
app.command("stats")(stats.stats)
app.command("meta-train")(meta_train.meta_train)
app.command("evaluate")(evaluate.evaluate)
app.command("compare")(compare.compare)
app.command("train")(train.train)
app.command("train-siamese")(train_siamese.train_siamese)
app.command("predict")(predict.predict)
app.command("similarity")(similarity.similarity)
app.command("runs")(runs.runs)
app.command("ls", help="Alias of `cxr runs`.")(runs.runs)
app.command("app")(webapp.app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - raised outside a command body
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)


for _info in (*app.registered_commands, *download.app.registered_commands):  # one exit-code table in every --help
    _info.epilog = _info.epilog or EXIT_CODES_EPILOG
