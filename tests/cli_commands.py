"""The app's leaf commands by full name, for the tests that check every command (vocabulary, --config)."""

from __future__ import annotations

import functools
from typing import Any

import typer

from cxr_tools.cli.app import app


@functools.cache
def leaf_commands() -> dict[str, Any]:
    """Every leaf command of the app by its full name (``download nih``)."""
    out: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            out[path] = command

    walk(typer.main.get_command(app), "")
    return out
