"""``cxr preprocess SRC -o CACHE``: decode a dataset once into an HDF5 or memory-mapped cache.

``cxr preprocess --merge PART... -o CACHE`` joins the partial caches of ``--shard i/n`` runs, or the caches of
different datasets into one cache with a dataset column (``--merge NIH_CACHE CHEXPERT_CACHE -o MERGED``).
"""

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
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    config_from_params,
    emit,
    exit_partial,
    handle_errors,
    output_option,
    progress_for,
)
from cxr_tools.cli.defaults import preprocess_paths
from cxr_tools.errors import ConfigError

_SOURCES = "auto, nih, chexpert, folder, dicom or synthetic"


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(p) for p in _split_list(text))
    except ValueError:
        raise ConfigError(f"Cannot read split fractions '{text}'.", "Write three numbers, e.g. 0.7,0.1,0.2.") from None
    if len(values) != 3:
        raise ConfigError(f"Split fractions need three numbers train,val,test; got '{text}'.", "E.g. 0.7,0.1,0.2.")
    return values  # type: ignore[return-value]


def preprocess(
    ctx: typer.Context,
    src: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Dataset directory or its name in $CXR_DATA (NIH, CheXpert, image folder, DICOM folder, synthetic); "
            "with --merge, the shard caches to join, or the caches of different datasets.",
            show_default="the only dataset in $CXR_DATA",
        ),
    ] = None,
    output: Annotated[
        Path | None, output_option("Cache directory to write.", show_default="$CXR_CACHE/<dataset>-<size>px[-...]")
    ] = None,
    source: Annotated[str, typer.Option("--source", help=f"Dataset kind: {_SOURCES}.")] = "auto",
    metadata: Annotated[
        Path | None,
        typer.Option("--metadata", help="Metadata CSV to use instead of the one found in SRC.", show_default=False),
    ] = None,
    views: Annotated[
        str, typer.Option("--views", help="Views to keep, comma-separated: frontal, lateral, all, PA, AP.")
    ] = "frontal",
    size: Annotated[int, typer.Option("--size", min=8, max=8192, help="Output side in pixels (square).")] = 256,
    crop: Annotated[
        str,
        typer.Option("--crop", help="center (central square), letterbox (pad to square) or none (plain resize)."),
    ] = "center",
    clahe: Annotated[bool, typer.Option("--clahe/--no-clahe", help="Contrast-limited histogram equalisation.")] = True,
    clahe_clip: Annotated[float, typer.Option("--clahe-clip", help="CLAHE clip limit.")] = 2.0,
    clahe_tile: Annotated[int, typer.Option("--clahe-tile", help="CLAHE tile grid (N x N).")] = 8,
    jpeg_draft: Annotated[
        bool,
        typer.Option(
            "--jpeg-draft/--no-jpeg-draft",
            help="Decode JPEGs at 1/2-1/8 scale in libjpeg when still >= --size (several times faster on CheXpert; "
            "pixels within a few gray levels of a full decode).",
        ),
    ] = False,
    brightness: Annotated[float, typer.Option("--brightness", help="Brightness offset in 8-bit units.")] = 0.0,
    format: Annotated[str, typer.Option("--format", help="Image store: hdf5 or memmap (.npy).")] = "hdf5",
    seed: SeedOpt = 0,
    fractions: Annotated[
        str, typer.Option("--fractions", help="Train,val,test fractions of patients when no official split exists.")
    ] = "0.7,0.1,0.2",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, help="Decoding processes (default: every available core; 0 = in this process)."
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Process only shard i of n (i from 0), or 'slurm' for this array task; join them with --merge.",
            show_default=False,
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Join the caches given as SRC into one cache at -o: the --shard parts of one run, or caches of "
            "different datasets (dataset column, dataset:id patient ids, canonical labels).",
        ),
    ] = False,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Images per work item.")] = 32,
    commit_seconds: Annotated[
        float,
        typer.Option(
            "--commit-seconds", min=0.0, help="Seconds between durable commits (at most this much is redone)."
        ),
    ] = 1.0,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Decode a dataset once (grayscale, crop/resize, CLAHE, brightness) into a cache with labels and splits.

    Exits 3 when some inputs could not be read (listed in CACHE/rejected.csv); the cache is still complete.
    """
    with handle_errors():
        from cxr_tools.engine.preprocess import MergeConfig, PreprocessConfig
        from cxr_tools.engine.preprocess import merge as merge_engine
        from cxr_tools.engine.preprocess import preprocess as preprocess_engine

        preprocess_paths(ctx)
        src, output = ctx.params["src"], ctx.params["output"]
        if merge:
            merge_cfg = MergeConfig(shards=tuple(src), output=output, overwrite=overwrite)
            result = merge_engine(merge_cfg, progress_for(quiet))
        else:
            if len(src) != 1:
                raise ConfigError(
                    f"preprocess takes one dataset directory, got {len(src)}.",
                    "Preprocess each dataset into its own cache, then join them with --merge.",
                )
            cfg = config_from_params(
                PreprocessConfig, ctx.params, src=src[0], views=_split_list(views), fractions=_fractions(fractions)
            )
            result = preprocess_engine(cfg, progress_for(quiet))

    def render(console: Console) -> None:
        table = Table(title=f"Cache {result.output} ({result.storage}, {result.image_size}² uint8)")
        table.add_column("split")
        table.add_column("images", justify="right")
        for name, count in result.splits.items():
            table.add_row(name, str(count))
        console.print(table)
        what = f"{result.images} images of {result.patients} patients"
        if result.shard:
            what += f" (shard {result.shard})"
        console.print(f"{what}, {len(result.labels)} labels, from a {result.source_kind} source")
        if result.datasets:
            console.print("datasets: " + ", ".join(f"{k} {v} images" for k, v in result.datasets.items()))
        if result.resumed_from:
            console.print(f"Resumed after {result.resumed_from} inputs already done.")
        if result.rejected:
            console.print(f"{result.rejected} input(s) rejected: see {result.rejected_file}")
        console.print(f"{result.seconds:.1f} s, {result.inputs_per_second:.0f} inputs/s")

    emit(result, json_output, render)
    exit_partial(result.rejected, "inputs")
