"""Engine of ``cxr runs`` (alias ``cxr ls``): what the workspace under ``CXR_HOME`` holds.

Orchestration only: the listing itself (status, date and headline metric read from the files each command
writes) lives in :mod:`cxr_tools.workspace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr_tools import paths
from cxr_tools.errors import ConfigError
from cxr_tools.workspace import TRAINING_KINDS, Entry, entries

#: ``--kind`` values: an entry kind, or ``run`` for every training command's runs.
KINDS = ("dataset", "cache", "run", *TRAINING_KINDS, "evaluate")


@dataclass(frozen=True)
class RunsConfig:
    """Settings of ``cxr runs``.

    Attributes:
        kind: list only this kind (one of :data:`KINDS`); None lists everything.
        status: list only entries with this status (``completed``, ``running``, ``interrupted``, ``failed``,
            ``incomplete``); None lists every status.
    """

    kind: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class RunsResult:
    """The workspace's roots and what they hold (datasets, caches, then runs with their evaluations)."""

    home: Path
    data: Path
    cache: Path
    runs: Path
    entries: tuple[Entry, ...]


def list_runs(config: RunsConfig) -> RunsResult:
    """Everything in the workspace that matches ``config``'s filters."""
    if config.kind is not None and config.kind not in KINDS:
        raise ConfigError(f"Unknown --kind '{config.kind}'.", f"Use one of: {', '.join(KINDS)}.")
    wanted = TRAINING_KINDS if config.kind == "run" else (config.kind,)
    found = tuple(
        e
        for e in entries()
        if (config.kind is None or e.kind in wanted) and (config.status is None or e.status == config.status)
    )
    return RunsResult(paths.cxr_home(), paths.data_root(), paths.cache_root(), paths.runs_root(), found)
