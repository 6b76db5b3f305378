"""``cxr download DATASET``: one sub-command per dataset source."""

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

app = typer.Typer(
    help="Fetch a dataset (NIH ChestX-ray14, Kaggle mirror, CheXpert) or write the synthetic phantom dataset.",
    no_args_is_help=True,
)


@app.command("synthetic")
def synthetic(
    ctx: typer.Context,
    dest: Annotated[Path, typer.Option("--dest", "-o", help="Directory to write the dataset into.")],
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")] = 200,
    size: Annotated[int, typer.Option("--size", min=32, max=4096, help="Image side in pixels.")] = 256,
    seed: SeedOpt = 0,
    layout: Annotated[str, typer.Option("--layout", help="nih or chexpert directory layout.")] = "nih",
    format: Annotated[str, typer.Option("--format", help="png or dicom image files.")] = "png",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Worker processes (0 = in this process).")] = 0,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Write the built-in synthetic chest X-ray phantom dataset (offline; same seed, same bytes)."""
    with handle_errors():
        from cxr_tools.data.synthetic import SyntheticConfig
        from cxr_tools.engine.download import download_synthetic

        cfg = make_config(
            ctx,
            SyntheticConfig,
            config,
            "synthetic",
            dest=dest,
            patients=patients,
            size=size,
            seed=seed,
            layout=layout,
            format=format,
            workers=workers,
            overwrite=overwrite,
        )
        result = download_synthetic(cfg, progress_for())

    def render(console: Console) -> None:
        table = Table(title=f"Synthetic dataset ({result.layout} layout, {result.format})", show_lines=False)
        table.add_column("label")
        table.add_column("images", justify="right")
        for label, count in result.label_counts.items():
            table.add_row(label, str(count))
        console.print(table)
        console.print(f"{result.n_images} images of {result.n_patients} patients written to {result.dest}")

    emit(result, json_output, render)
