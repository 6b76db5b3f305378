"""Engine of ``cxr stats CACHE``: label, patient, split and view statistics of a cache, and two plots.

Reads only ``manifest.json`` and ``index.csv``, never the images (the seed projects loaded every image to
count labels). "Positive" means a stored value of 1; uncertain (-1) values are counted separately, so a
CheXpert cache shows how much a choice of uncertainty policy matters. Outputs in ``--output`` (default
``CACHE/stats/``), each written atomically and replaced on every run (they are derived from the cache):
``label_counts.png``, ``cooccurrence.png`` and ``stats.json`` (the same content as ``--json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools import config as cfg
from cxr_tools.data.cache import INDEX, MANIFEST, SCHEMA_VERSION, read_index, require_complete
from cxr_tools.errors import CacheError, CxrError
from cxr_tools.runtime.fs import atomic_write_text
from cxr_tools.runtime.progress import Progress, null_progress

UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class StatsConfig:
    """Options of ``cxr stats``."""

    cache: Path
    out: Path | None = None  # default CACHE/stats
    plots: bool = True


@dataclass(frozen=True)
class LabelStats:
    """Counts for one label: positive images and patients, uncertain images, per split."""

    label: str
    images: int
    patients: int
    uncertain: int
    split_images: dict[str, int] = field(default_factory=dict)
    split_patients: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitStats:
    images: int
    patients: int


@dataclass(frozen=True)
class StatsResult:
    """What ``cxr stats`` reports (also written to ``stats.json``)."""

    cache: Path
    source: str
    n_images: int
    n_patients: int
    labels: tuple[LabelStats, ...]
    no_positive_images: int  # images positive for no label (NIH "No Finding")
    labels_per_image: dict[int, int]  # number of positive labels -> images
    splits: dict[str, SplitStats]
    views: dict[str, int]
    cooccurrence: tuple[tuple[int, ...], ...]  # [L, L] images positive for both; diagonal = images per label
    out: Path | None
    plots: tuple[Path, ...]


def _load(cache: Path) -> tuple[dict[str, Any], Any]:
    require_complete(cache)
    try:
        manifest = json.loads((cache / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CacheError(f"{cache / MANIFEST} is not valid JSON.", "Recreate the cache.") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise CacheError(
            f"Cache {cache} has schema version {manifest.get('schema_version')}; this tool reads {SCHEMA_VERSION}.",
            "Recreate the cache with this version of `cxr preprocess`.",
        )
    if not (cache / INDEX).is_file():
        raise CacheError(f"Cache {cache} lacks {INDEX}.", "Recreate the cache.")
    index = read_index(cache / INDEX)
    labels = [str(x) for x in manifest.get("labels", [])]
    missing = [c for c in ("patient_id", "split", "view", *labels) if c not in index.columns]
    if missing:
        raise CacheError(f"{cache / INDEX} lacks column(s) {', '.join(missing)}.", "Recreate the cache.")
    return manifest, index


def compute_stats(index: Any, labels: list[str]) -> dict[str, Any]:
    """The numbers of :class:`StatsResult` from an index DataFrame (pure; no files)."""
    raw = index[labels].to_numpy(dtype=np.float32, na_value=np.nan) if labels else np.zeros((len(index), 0))
    pos = raw == 1
    unc = raw == -1
    pids = index["patient_id"].astype(str).to_numpy()
    split = index["split"].astype(str).str.strip().replace("", UNASSIGNED).to_numpy()
    order = ["train", "val", "test", UNASSIGNED]
    split_names = sorted(set(split), key=lambda s: (order.index(s) if s in order else len(order), s))
    per_label = []
    for j, label in enumerate(labels):
        col = pos[:, j]
        per_label.append(
            LabelStats(
                label=label,
                images=int(col.sum()),
                patients=len(set(pids[col])),
                uncertain=int(unc[:, j].sum()),
                split_images={s: int((col & (split == s)).sum()) for s in split_names},
                split_patients={s: len(set(pids[col & (split == s)])) for s in split_names},
            )
        )
    n_pos = pos.sum(axis=1)
    hist = np.bincount(n_pos, minlength=1) if len(n_pos) else np.zeros(1, dtype=np.int64)
    views = index["view"].astype(str).str.strip().replace("", "unknown").value_counts()
    co = pos.astype(np.int64).T @ pos.astype(np.int64)
    return {
        "n_images": len(index),
        "n_patients": len(set(pids)),
        "labels": tuple(per_label),
        "no_positive_images": int((n_pos == 0).sum()),
        "labels_per_image": {int(k): int(v) for k, v in enumerate(hist) if v},
        "splits": {s: SplitStats(int((split == s).sum()), len(set(pids[split == s]))) for s in split_names},
        "views": {str(k): int(v) for k, v in views.items()},
        "cooccurrence": tuple(tuple(int(v) for v in row) for row in co),
    }


def run_stats(config: StatsConfig, progress: Progress | None = None) -> StatsResult:
    """Compute the statistics of ``config.cache`` and write the plots and ``stats.json`` into the out dir."""
    progress = null_progress(progress)
    cache = Path(config.cache)
    manifest, index = _load(cache)
    labels = [str(x) for x in manifest.get("labels", [])]
    numbers = compute_stats(index, labels)
    out = Path(config.out) if config.out is not None else cache / "stats"
    plots: list[Path] = []
    try:
        with progress.task("stats", total=3 if config.plots and labels else 1) as task:
            if config.plots and labels:
                from cxr_tools.eval.plots import plot_cooccurrence, plot_label_counts

                stats = numbers["labels"]
                plots.append(
                    plot_label_counts(
                        out / "label_counts.png",
                        labels,
                        [s.images for s in stats],
                        [s.patients for s in stats],
                        title=f"Images and patients per label ({cache.name})",
                    )
                )
                task.advance()
                plots.append(plot_cooccurrence(out / "cooccurrence.png", labels, numbers["cooccurrence"]))
                task.advance()
            result = StatsResult(
                cache=cache,
                source=str(manifest.get("source", "")),
                out=out,
                plots=tuple(plots),
                **numbers,
            )
            atomic_write_text(out / "stats.json", cfg.to_json(result) + "\n")
            task.advance()
    except PermissionError as exc:
        raise CxrError(f"Cannot write statistics to {out}: {exc.strerror}.", "Pass --output DIR (writable).") from exc
    return result
