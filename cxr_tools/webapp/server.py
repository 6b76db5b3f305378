"""Engine of ``cxr app``: load the run once, build the page, serve it (module docstring of the package).

Safety defaults: the server binds 127.0.0.1; any other address requires ``auth`` (Gradio's login), because the
page reads and writes files on the server (a saved few-shot run, any results directory). Public share links are
never created (``share=False``), Gradio's analytics are off (``GRADIO_ANALYTICS_ENABLED=False``: no network),
and uploads above ``max_upload_mb`` are refused by Gradio before any handler sees them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_tools.errors import ConfigError, DependencyError, ResourceError

log = logging.getLogger(__name__)

#: Example images taken from ``--data`` for the Classify tab.
MAX_EXAMPLES = 4


@dataclass(frozen=True)
class AppConfig:
    """Settings of ``cxr app``.

    Attributes:
        model: a run directory or model folder.
        data: a cache (``cxr preprocess`` output) whose test images are offered as examples.
        host: the address to bind; anything but loopback needs ``auth``.
        port: the TCP port (0 = any free port).
        auth: ``USER:PASS`` for Gradio's login page.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        max_upload_mb: uploads above this size are refused.
        results: folders searched for evaluation / comparison directories (default: around the run).
    """

    model: Path
    data: Path | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    auth: str | None = None
    device: str = "auto"
    max_upload_mb: int = 50
    results: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535 (got {self.port}).")
        if self.max_upload_mb < 1:
            raise ConfigError(f"--max-upload-mb must be >= 1 (got {self.max_upload_mb}).")
        if self.auth is not None:
            user, sep, password = self.auth.partition(":")
            if not sep or not user or not password:
                raise ConfigError("--auth must be USER:PASS.", "Example: --auth alice:s3cret.")
        if not is_loopback(self.host) and self.auth is None:
            raise ConfigError(
                f"Serving on {self.host} would let anyone who can reach it use the page, which reads and writes "
                "files on this machine.",
                "Add --auth USER:PASS, or keep the default --host 127.0.0.1 (and use an SSH tunnel).",
            )


@dataclass(frozen=True)
class RunningApp:
    """A started server: its URL and how to stop it."""

    url: str
    close: Callable[[], None]
    page: Any


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start(config: AppConfig) -> RunningApp:
    """Load the run, build the page and start serving it in a background thread.

    Raises:
        DependencyError: Gradio is not installed.
        ModelError: the run cannot be loaded.
    """
    import importlib.util

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if importlib.util.find_spec("gradio") is None:
        raise DependencyError(
            "`cxr app` needs Gradio, which is not installed.", "pip install 'cxr-tools[app]' (or make setup)."
        )
    from cxr_tools.webapp.service import RunService

    service = RunService(Path(config.model), config.device)  # a bad run fails before Gradio's slow import
    roots = list(config.results) or _results_roots(Path(config.model))
    examples = _examples(Path(config.data)) if config.data is not None else []
    from cxr_tools.webapp.page import build_page

    page = build_page(service, roots, examples)
    auth = tuple(config.auth.split(":", 1)) if config.auth else None
    page.queue(default_concurrency_limit=1)  # one model: requests take turns
    try:
        _, url, _ = page.launch(
            server_name=config.host,
            server_port=config.port or _free_port(config.host),
            auth=auth,
            share=False,
            prevent_thread_lock=True,
            quiet=True,
            max_file_size=config.max_upload_mb * 1024 * 1024,
            show_error=True,
            footer_links=[],
        )
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise ResourceError(
            f"Cannot listen on {config.host}:{config.port}: {exc}", "Pass another --port (0 = any free port)."
        ) from None
    log.info("serving %s at %s", config.model, url)
    return RunningApp(url=str(url), close=page.close, page=page)


def serve(config: AppConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Start the app and block until interrupted (Ctrl-C / SIGTERM)."""
    import threading

    running = start(config)
    if on_ready is not None:
        on_ready(running.url)
    try:
        threading.Event().wait()
    finally:
        running.close()


def _results_roots(model: Path) -> list[Path]:
    """Where evaluations of a run usually are: the run itself, and two levels up (a workspace or demo folder)."""
    run = model.parent if model.name == "model" else model
    return [run, *run.parents[:2]] if len(run.parents) >= 2 else [run]


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _examples(cache: Path) -> list[str]:
    """A few test-split images of ``cache`` for the Classify tab: their original files (``source_path``), so the
    page decodes them exactly as an upload."""
    from cxr_tools.data.caches.format import read_tables, require_complete

    _, index = read_tables(require_complete(cache))
    test = index[index["split"].astype(str) == "test"] if "split" in index else index
    paths = [str(p) for p in (test if len(test) else index)["source_path"].astype(str)]
    found = [p for p in paths[: 20 * MAX_EXAMPLES] if Path(p).is_file()][:MAX_EXAMPLES]
    if not found:
        log.warning("no original image of %s exists on this machine: no examples", cache)
    return found
