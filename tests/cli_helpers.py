"""Helpers of the CLI tests: the app's leaf commands (for the checks of every command) and the one-line error check."""

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


def assert_one_line_error(res: Any, *needles: str, prefix: str = "Error: ") -> None:
    """The CLI contract for a library error: exit 1 and one line on stderr, starting ``prefix``, naming each needle."""
    assert res.exit_code == 1, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
