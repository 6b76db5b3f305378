"""``cxr similarity A B --model RUN``: the similarity of two images under a run's embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cxr_tools.cli.common import ConfigOpt, DeviceOpt, JsonOpt, build_config, emit, handle_errors


def similarity(
    a: Annotated[Path, typer.Argument(help="First image (PNG, JPEG, DICOM...).", show_default=False)],
    b: Annotated[Path, typer.Argument(help="Second image.", show_default=False)],
    model: Annotated[Path, typer.Option("--model", "-m", help="Run directory or model folder.", show_default=False)],
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a side-by-side PNG of the two preprocessed images.", show_default=False),
    ] = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Similarity in [0, 1] of two images (1 = identical embedding).

    A Siamese run compares its embeddings with the distance it was trained with; a MAML or supervised run
    compares its L2-normalised backbone features by cosine. Both images are preprocessed as the run's cache was.
    """
    with handle_errors():
        from cxr_tools.engine.similarity import SimilarityConfig, run_similarity

        cfg = build_config(SimilarityConfig, a=a, b=b, model=model, device=device, plot=plot)
        result = run_similarity(cfg)

    def render(console: Console) -> None:
        console.print(
            f"similarity {result.similarity:.4f}  ({result.distance_kind} distance {result.distance:.4f}, "
            f"{result.embedding} of a {result.training} run)",
            highlight=False,
        )
        if result.plot is not None:
            console.print(f"plot: {escape(str(result.plot))}", highlight=False)

    emit(result, json_output, render)
