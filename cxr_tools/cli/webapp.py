"""``cxr app --model RUN``: a web page to try a run in a browser (classify with Grad-CAM, similarity, few-shot,
results). Gradio is imported only when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_tools.cli.common import ConfigOpt, DeviceOpt, config_from_params, handle_errors, stderr_console


def app(
    ctx: typer.Context,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Run directory or model folder to serve.", show_default=False)
    ],
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Cache whose test images are offered as examples.", show_default=False),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 / localhost needs --auth.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 = any free port).")] = 7860,
    auth: Annotated[
        str | None, typer.Option("--auth", help="USER:PASS for the login page.", show_default=False)
    ] = None,
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, help="Uploads above this many MB are refused.")
    ] = 50,
    results: Annotated[
        list[Path] | None,
        typer.Option(
            "--results",
            help="Folder to search for evaluation / comparison directories (repeatable).",
            show_default="the run's folder and two levels up",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
) -> None:
    """Serve a web page to try a run: per-finding scores with Grad-CAM, similarity, few-shot adaptation, results.

    The run is loaded once. The page binds 127.0.0.1 by default (reach it from another machine through an SSH
    tunnel); binding another address requires --auth. No public share link is ever created. Ctrl-C stops it.
    """
    console = stderr_console()
    with handle_errors():
        from cxr_tools.webapp.server import AppConfig, serve

        cfg = config_from_params(AppConfig, ctx.params, results=tuple(results or ()))
        try:
            serve(cfg, on_ready=lambda url: console.print(f"cxr app: serving {model} at {url} (Ctrl-C stops)"))
        except KeyboardInterrupt:
            console.print("stopped")
