"""``cxr predict INPUT -o out.csv --model RUN``: per-image class probabilities as a CSV."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from cxr_tools.cli.common import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    config_from_params,
    emit,
    exit_partial,
    handle_errors,
    output_option,
    progress_for,
    stderr_console,
)
from cxr_tools.cli.defaults import predict_model


def predict(
    ctx: typer.Context,
    input: Annotated[
        Path,
        typer.Argument(
            help="An image folder (searched recursively; PNG, JPEG, DICOM), an image file, or a CSV with a 'path' "
            "column (or one path per line); relative paths in a list are relative to the list's folder.",
            show_default=False,
        ),
    ],
    output: Annotated[Path, output_option("The predictions CSV to write.")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            envvar="CXR_MODEL",
            help="Run directory, its name in $CXR_RUNS, or a model folder to predict with (also CXR_MODEL, or "
            "'model' under 'predict:' in $CXR_HOME/config.yaml).",
            show_default="the most recently completed run in $CXR_RUNS that can predict",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass (scores do not depend on it).")
    ] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Decoding processes (0 = in this process).",
            show_default="cores/4 on CPU, all cores on GPU",
        ),
    ] = None,
    threshold: Annotated[
        str | None,
        typer.Option(
            "--threshold",
            help="Thresholds of the <label>_pred 0/1 columns, written with their rule to NAME.thresholds.json "
            "beside the CSV: support (per class, max F1 on the adapted --support set), one probability for every "
            "class (0.5), per class (Effusion=0.3,Mass=0.6), or none (no _pred columns).",
            show_default="--support's, else the run's validation thresholds, else 0.5",
        ),
    ] = None,
    support: Annotated[
        Path | None,
        typer.Option(
            "--support",
            help="Labelled images to adapt to first: a CSV path,<class>... of 0/1, or a folder with one sub-folder "
            "per class plus 'negative' / 'No Finding' / 'NORMAL'. The output columns become its classes. "
            "Required for MAML and Siamese runs.",
            show_default=False,
        ),
    ] = None,
    min_support: Annotated[
        int, typer.Option("--min-support", min=1, help="Positive support images every class needs.")
    ] = 1,
    method: Annotated[
        str,
        typer.Option(
            "--method", help="Adaptation to --support: auto (from the run), maml, prototype, finetune, scratch."
        ),
    ] = "auto",
    finetune: Annotated[str, typer.Option("--finetune", help="Fine-tune a new 'head' only or 'all' layers.")] = "head",
    cam: Annotated[
        Path | None,
        typer.Option(
            "--cam",
            help="Also write Grad-CAM overlay PNGs into this folder: per image, one per finding at or above its "
            "threshold (the _pred columns' threshold; 0.5 with --threshold none), or per --cam-classes finding.",
            show_default=False,
        ),
    ] = None,
    cam_classes: Annotated[
        str | None,
        typer.Option(
            "--cam-classes", help="Findings to explain for every image with --cam (Effusion,Mass).", show_default=False
        ),
    ] = None,
    device: DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (CUDA only).")] = False,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue the rows an interrupted run with the same settings left; --no-resume starts over.",
        ),
    ] = True,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Score images with a trained run: one CSV row per input with a probability per class.

    A file that cannot be read gets a row with its error and the others are still scored (exit code 3).
    The images are preprocessed exactly as the run's training cache was. Rows are saved as they are scored:
    after a kill or a time limit, the same command continues where it stopped.
    """
    with handle_errors():
        from cxr_tools.engine.predict import PredictConfig, run_predict
        from cxr_tools.workspace import record_choice

        choice = predict_model(ctx)
        cfg = config_from_params(PredictConfig, ctx.params)
        result = run_predict(cfg, progress_for(quiet))
        record_choice(result.output, choice)

    _report_failures(stderr_console(), result)
    if result.threshold_rule:
        stderr_console().print(
            f"thresholds: {escape(result.threshold_rule)} -> {escape(str(result.thresholds_file))}",
            highlight=False,
            soft_wrap=True,
        )

    def render(console: Console) -> None:
        adapted = f", adapted to {result.n_support} support images ({result.method})" if result.n_support else ""
        resumed = f" ({result.n_resumed} from the interrupted run)" if result.n_resumed else ""
        console.print(
            f"{result.n_ok} of {result.n_inputs} images scored{resumed} for {len(result.labels)} classes{adapted} "
            f"-> {escape(str(result.output))}",
            highlight=False,
        )
        if result.cam is not None:
            console.print(f"{result.n_cam} saliency overlays -> {escape(str(result.cam))}", highlight=False)

    emit(result, json_output, render)
    if result.n_failed and result.n_failed >= result.n_inputs:
        sys.stderr.write(f"Error: all {result.n_inputs} inputs failed (see {result.output}).\n")
        raise typer.Exit(1)
    exit_partial(result.n_failed, "inputs")


def _report_failures(console: Console, result: Any) -> None:
    for path, reason in result.failures:
        console.print(f"[red]failed:[/red] {escape(path)}: {escape(reason)}", highlight=False)
    if result.n_failed > len(result.failures):
        console.print(f"... and {result.n_failed - len(result.failures)} more (see the error column of the CSV)")
