"""``cxr app --model RUN``: a web page to try a run in a browser (classify with Grad-CAM, similarity, few-shot,
results). Gradio is imported only when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_tools.cli.common import (
    ConfigOpt,
    DeviceOpt,
    config_from_params,
    config_source,
    handle_errors,
    stderr_console,
)


def app(
    ctx: typer.Context,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            envvar="CXR_MODEL",
            help="Run directory, its name in $CXR_RUNS, or a model folder to serve (also CXR_MODEL).",
            show_default="the most recently completed run in $CXR_RUNS",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="Cache (path or name) whose test images are offered as examples.", show_default=False
        ),
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
        from cxr_tools import workspace
        from cxr_tools.webapp.server import AppConfig, serve

        choice = workspace.choose_run(
            model, config_source(ctx, "model"), kinds=workspace.TRAINING_KINDS, purpose="No --model given"
        )
        if model is None or choice.path != Path(model).expanduser():
            console.print(f"Model: {choice.path} ({choice.source})", highlight=False)
        ctx.params["model"] = choice.path
        if data is not None:
            ctx.params["data"] = workspace.resolve_cache(data, "--data")
        cfg = config_from_params(AppConfig, ctx.params, results=tuple(results or ()))
        try:
            serve(cfg, on_ready=lambda url: console.print(f"cxr app: serving {cfg.model} at {url} (Ctrl-C stops)"))
        except KeyboardInterrupt:
            console.print("stopped")
