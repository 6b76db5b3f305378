"""``cxr download DATASET``: one sub-command per dataset source."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    JsonOpt,
    OverwriteOpt,
    SeedOpt,
    WorkersOpt,
    config_from_params,
    emit,
    exit_partial,
    handle_errors,
    output_option,
    progress_for,
)
from cxr_tools.cli.defaults import download_dest

app = typer.Typer(
    help="Fetch a dataset (NIH ChestX-ray14, Kaggle mirror, CheXpert) or write the synthetic phantom dataset.",
    no_args_is_help=True,
)


@app.command("synthetic")
def synthetic(
    ctx: typer.Context,
    output: Annotated[
        Path | None, output_option("Directory to write the dataset into.", "--dest", show_default="$CXR_DATA/synthetic")
    ] = None,
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")] = 200,
    size: Annotated[int, typer.Option("--size", min=32, max=4096, help="Image side in pixels.")] = 256,
    seed: SeedOpt = 0,
    layout: Annotated[str, typer.Option("--layout", help="nih or chexpert directory layout.")] = "nih",
    format: Annotated[str, typer.Option("--format", help="png or dicom image files.")] = "png",
    workers: WorkersOpt = 0,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Write the built-in synthetic chest X-ray phantom dataset (offline; same seed, same bytes)."""
    with handle_errors():
        from cxr_tools.data.synthetic import SyntheticConfig
        from cxr_tools.engine.download import download_synthetic

        download_dest(ctx, "synthetic")
        cfg = config_from_params(SyntheticConfig, ctx.params, dest=ctx.params["output"])
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


# --- real datasets ----------------------------------------------------------------------------------------
DatasetOutputOpt = Annotated[Path | None, output_option("Dataset directory (default: $CXR_DATA/<dataset>).", "--dest")]
KeepArchivesOpt = Annotated[
    bool, typer.Option("--keep-archives", help="Keep the downloaded archives after extraction (to re-extract later).")
]
RetriesOpt = Annotated[int, typer.Option("--retries", min=0, help="Retries per file after a transient failure.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds without data before a retry.")]
BackoffOpt = Annotated[
    float, typer.Option("--backoff", min=0.0, help="First wait between retries in seconds; doubles each retry.")
]


def _check_parts(value: str | None) -> str | None:
    if value is None:
        return None
    from cxr_tools.data.download.nih import parse_parts
    from cxr_tools.errors import ConfigError

    try:
        parse_parts(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _check_checksums(value: str | None) -> str | None:
    if value is not None:
        _checksums(value)
    return value


def _checksums(text: str | None) -> dict[str, str] | None:
    """``images_001.tar.gz=MD5,...`` -> a mapping; in ``--config`` a YAML mapping is written the same way."""
    if not text:
        return None
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise typer.BadParameter(f"'{text}' is not NAME=MD5[,NAME=MD5...].")
    return {name.strip(): md5.strip() for name, md5 in pairs}


def _print_parts(console: Console, title: str, reports: Any) -> None:
    """A table of units, then each failure's full message on its own line (readable in narrow SLURM logs)."""
    from cxr_tools.data.download.state import human_bytes

    table = Table(title=title)
    table.add_column("file", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("files", justify="right")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("seconds", justify="right")
    table.add_column("detail", overflow="fold")
    for r in reports:
        style = "red" if r.failed else ("dim" if r.status == "skipped" else "")
        detail = "see below" if r.failed else escape(r.detail)
        table.add_row(
            escape(r.name), r.status, str(r.files), human_bytes(r.bytes), f"{r.seconds:.1f}", detail, style=style
        )
    console.print(table)
    for r in reports:
        if r.failed:
            detail = escape(r.detail.removeprefix(f"{r.name}: "))
            console.print(f"[red]{escape(r.name)} failed:[/red] {detail}", highlight=False)


def _render_disk(console: Console, disk: Any) -> None:
    from cxr_tools.data.download.state import human_bytes

    table = Table(title=f"On disk in {disk.dest}")
    table.add_column("entry")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    for e in disk.entries:
        table.add_row(e.name, str(e.files), human_bytes(e.bytes))
    console.print(table)
    console.print(f"{disk.n_images} images, {disk.n_files} files, {human_bytes(disk.total_bytes)} in {disk.dest}")


def _finish(failed: int, total: int, what: str) -> None:
    """Exit 1 when everything failed, 3 when only some units failed (each is in the table)."""
    if failed and failed >= total:
        sys.stderr.write(f"Error: all {total} {what} failed (see the table above).\n")
        raise typer.Exit(1)
    exit_partial(failed, what)


@app.command("nih")
def nih(
    ctx: typer.Context,
    output: DatasetOutputOpt = None,
    parts: Annotated[
        str | None,
        typer.Option("--parts", callback=_check_parts, help="Archives to fetch, e.g. 1,3-5 (default: all 12)."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="Mirror: BASE/images_NNN.tar.gz, or a template with {name}, {id}, {part}. Default: NIH's box.com.",
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            help="Metadata CSV / split lists: 'kaggle', a URL, a file, a folder or a zip/tar of them (repeatable).",
        ),
    ] = None,
    checksums: Annotated[
        str | None,
        typer.Option(
            "--checksums",
            callback=_check_checksums,
            help="MD5s overriding the official ones: images_001.tar.gz=MD5,... (a mapping in --config).",
            show_default=False,
        ),
    ] = None,
    keep_archives: KeepArchivesOpt = False,
    retries: RetriesOpt = 5,
    timeout: TimeoutOpt = 60.0,
    backoff: BackoffOpt = 2.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Download and extract again parts already complete.")
    ] = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Download NIH ChestX-ray14: the official archives, MD5-verified, resumable, extracted safely.

    Rerunning skips parts already complete; an interrupted download resumes. Exit 3 when some parts failed.
    """
    with handle_errors():
        from cxr_tools.data.download.nih import NihConfig
        from cxr_tools.engine.download import download_nih

        cfg = config_from_params(
            NihConfig,
            ctx.params,
            dest=output,
            parts=parts or (),
            metadata=tuple(metadata or ()),
            checksums=_checksums(checksums),
        )
        result = download_nih(cfg, progress_for())

    def render(console: Console) -> None:
        _print_parts(console, "NIH ChestX-ray14 archives", result.parts)
        if result.metadata:
            _print_parts(console, "Metadata", result.metadata)
        _render_disk(console, result.disk)

    emit(result, json_output, render)
    _finish(result.failed, len(result.parts) + len(result.metadata), "archives or metadata files")


@app.command("kaggle")
def kaggle(
    ctx: typer.Context,
    output: DatasetOutputOpt = None,
    from_dir: Annotated[
        Path | None,
        typer.Option("--from", help="Use a mirror already downloaded (unpacked) here instead of kagglehub."),
    ] = None,
    handle: Annotated[str, typer.Option("--handle", help="Kaggle dataset handle.")] = "nih-chest-xrays/data",
    link: Annotated[
        str, typer.Option("--link", help="hardlink (falls back to copy), symlink or copy into --dest.")
    ] = "hardlink",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files already in --dest.")] = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Download NIH ChestX-ray14 from its Kaggle mirror with kagglehub (needs Kaggle credentials)."""
    with handle_errors():
        from cxr_tools.data.download.kaggle import KaggleConfig
        from cxr_tools.engine.download import download_kaggle

        cfg = config_from_params(KaggleConfig, ctx.params, dest=output)
        result = download_kaggle(cfg, progress_for())

    def render(console: Console) -> None:
        _print_parts(console, f"Kaggle mirror {result.handle}", [result.files])
        _render_disk(console, result.disk)
        if result.missing:
            console.print(f"[yellow]Not in the mirror: {', '.join(result.missing)}[/yellow]")

    emit(result, json_output, render)


@app.command("chexpert")
def chexpert(
    ctx: typer.Context,
    origin: Annotated[
        str | None,
        typer.Option(
            "--from", help="The signed download URL Stanford sent you, or the archive file.", show_default=False
        ),
    ] = None,
    output: DatasetOutputOpt = None,
    md5: Annotated[str | None, typer.Option("--md5", help="Expected MD5 of the archive, if you have one.")] = None,
    keep_archives: KeepArchivesOpt = False,
    retries: RetriesOpt = 5,
    timeout: TimeoutOpt = 60.0,
    backoff: BackoffOpt = 2.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Extract again even if already complete.")] = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Install CheXpert from its signed URL or an archive on disk; checks train.csv and valid.csv."""
    with handle_errors():
        from cxr_tools.data.download.chexpert import ChexpertConfig
        from cxr_tools.engine.download import download_chexpert

        cfg = config_from_params(ChexpertConfig, ctx.params, source=origin or "", dest=output)
        result = download_chexpert(cfg, progress_for())

    def render(console: Console) -> None:
        _print_parts(console, "CheXpert archive", [result.archive])
        console.print(f"train.csv: {result.train_rows} rows, valid.csv: {result.valid_rows} rows in {result.root}")
        _render_disk(console, result.disk)

    emit(result, json_output, render)
