"""``cxr demo``: the pipeline on the built-in synthetic dataset, on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    JsonOpt,
    OverwriteOpt,
    SeedOpt,
    emit,
    handle_errors,
    make_config,
    progress_for,
)


def demo(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option("--workdir", "-o", help="Where the demo writes everything.")] = Path(
        "cxr-demo"
    ),
    patients: Annotated[int, typer.Option("--patients", min=10, help="Synthetic patients to generate.")] = 120,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 128,
    quick: Annotated[bool, typer.Option("--quick", help="A smaller, faster run.")] = False,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Run the whole pipeline on the built-in synthetic dataset and print a summary."""
    with handle_errors():
        from cxr_tools.engine.demo import DemoConfig, run_demo

        cfg = make_config(
            ctx,
            DemoConfig,
            config,
            "demo",
            workdir=workdir,
            patients=patients,
            size=size,
            quick=quick,
            seed=seed,
            overwrite=overwrite,
        )
        result = run_demo(cfg, progress_for())

    def render(console: Console) -> None:
        table = Table(title="Synthetic dataset: images per finding")
        table.add_column("finding")
        table.add_column("images", justify="right")
        for label, count in result.label_counts.items():
            table.add_row(label, str(count))
        console.print(table)
        console.print(f"{result.n_images} images of {result.n_patients} patients in {result.dataset}")
        for stage, seconds in result.stages.items():
            console.print(f"  {stage}: {seconds:.1f} s")

    emit(result, json_output, render)
