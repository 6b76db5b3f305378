"""What a download leaves on disk: completion markers, per-part reports and the closing inventory.

A dataset directory holds a hidden ``.cxr-download/`` folder of JSON markers, one per completed unit (an archive
extracted, a metadata file checked). A marker is written atomically and only after its unit is complete and
verified, so "marker present and its files still there" is the whole test for skipping a unit on a rerun; no
network call is made for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_tools.data.download.http import RetryPolicy
from cxr_tools.runtime.fs import atomic_write_json

STATE_DIR = ".cxr-download"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm"})


@dataclass(frozen=True)
class PartReport:
    """The outcome of one unit (an archive, a metadata file).

    ``status`` is ``downloaded`` (fetched and installed now), ``extracted`` (installed from an archive already on
    disk), ``skipped`` (complete from an earlier run), ``copied`` or ``failed`` (``detail`` says why).
    """

    name: str
    status: str
    files: int = 0
    bytes: int = 0
    md5: str | None = None
    seconds: float = 0.0
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass(frozen=True)
class DiskEntry:
    """One top-level entry of a dataset directory."""

    name: str
    files: int
    bytes: int


@dataclass(frozen=True)
class DiskSummary:
    """What is on disk under a dataset directory (hidden entries such as ``.cxr-download`` excluded)."""

    dest: Path
    n_files: int
    n_images: int
    total_bytes: int
    entries: tuple[DiskEntry, ...]


def state_dir(dest: Path) -> Path:
    """The marker folder of dataset directory ``dest`` (created)."""
    path = dest / STATE_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_marker(path: Path) -> dict[str, Any] | None:
    """A marker's content, or None when absent or unreadable (an unreadable marker means "not complete")."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(path: Path, data: dict[str, Any]) -> None:
    """Write a completion marker atomically (last step of a unit)."""
    atomic_write_json(path, data)


def inventory(dest: Path) -> DiskSummary:
    """Count files, images and bytes under ``dest``, per top-level entry."""
    entries: list[DiskEntry] = []
    n_files = n_images = total = 0
    if dest.is_dir():
        for top in sorted(dest.iterdir(), key=lambda p: p.name):
            if top.name.startswith("."):
                continue
            files = size = 0
            for path in _walk(top):
                files += 1
                size += path.stat().st_size if not path.is_symlink() else 0
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    n_images += 1
            entries.append(DiskEntry(top.name + ("/" if top.is_dir() else ""), files, size))
            n_files += files
            total += size
    return DiskSummary(dest, n_files, n_images, total, tuple(entries))


def _walk(top: Path) -> list[Path]:
    if not top.is_dir():
        return [top]
    out: list[Path] = []
    for root, dirs, names in os.walk(top, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(Path(root) / n for n in names if not n.startswith("."))
    return out


def retry_policy(config: Any) -> RetryPolicy:
    """The :class:`RetryPolicy` of a download config (fields ``retries``, ``timeout``, ``backoff``...)."""
    return RetryPolicy(
        retries=config.retries,
        timeout=config.timeout,
        backoff=config.backoff,
        backoff_max=config.backoff_max,
        seed=config.retry_seed,
    )


def human_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
