"""Where cxr-tools keeps things when the user does not say.

Roots are resolved lazily from the environment at call time (never at import), so tests and SLURM jobs
can set them per process. An explicit path given by the user always wins over these defaults.

``CXR_HOME`` (default ``~/.cxr``) holds ``data/``, ``cache/``, ``runs/`` and the user config ``config.yaml``;
each of ``CXR_DATA``, ``CXR_CACHE`` and ``CXR_RUNS`` overrides one of the folders. How names are resolved in
them lives in :mod:`cxr_tools.workspace`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cxr_home() -> Path:
    """The root of everything cxr-tools stores by default."""
    return Path(os.environ.get("CXR_HOME") or Path.home() / ".cxr").expanduser()


def data_root() -> Path:
    """Where ``cxr download`` puts datasets when no ``--output`` is given."""
    env = os.environ.get("CXR_DATA")
    return Path(env).expanduser() if env else cxr_home() / "data"


def cache_root() -> Path:
    """Where ``cxr preprocess`` puts caches when no ``-o`` is given."""
    env = os.environ.get("CXR_CACHE")
    return Path(env).expanduser() if env else cxr_home() / "cache"


def runs_root() -> Path:
    """Where training commands put run directories when no ``-o`` is given."""
    env = os.environ.get("CXR_RUNS")
    return Path(env).expanduser() if env else cxr_home() / "runs"


def user_config() -> Path:
    """The user config: defaults for any command, below ``--config`` and the flags (docs/design.md)."""
    return cxr_home() / "config.yaml"


def resolve(path: str | os.PathLike[str] | None, default_root: Path, default_name: str) -> Path:
    """Return ``path`` if given, else ``default_root / default_name``."""
    if path is not None and str(path) != "":
        return Path(path).expanduser()
    return default_root / default_name
