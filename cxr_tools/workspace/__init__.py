"""The workspace under ``CXR_HOME``: datasets, caches and runs addressed by name, the defaults that let
``cxr preprocess``, ``cxr meta-train --shots 7`` and ``cxr predict dir/ -o out.csv`` work as written, and what
``cxr runs`` lists. Roots come from :mod:`cxr_tools.paths`; this package only reads the files the commands write
(``manifest.json``, ``run.json``, ``metrics.jsonl``, ``summary.json``), so it sits beside ``data`` and ``eval``.
"""

from cxr_tools.workspace.choice import LATEST, ModelChoice, choose_run, predict_kinds, record_choice
from cxr_tools.workspace.listing import Entry, entries, latest_completed
from cxr_tools.workspace.names import (
    TRAINING_KINDS,
    cache_dir,
    dataset_dir,
    resolve_cache,
    resolve_dataset,
    resolve_run,
    run_dir,
    settings_hash,
    significant,
    slug,
    writable,
)

__all__ = [
    "LATEST",
    "TRAINING_KINDS",
    "Entry",
    "ModelChoice",
    "cache_dir",
    "choose_run",
    "dataset_dir",
    "entries",
    "latest_completed",
    "predict_kinds",
    "record_choice",
    "resolve_cache",
    "resolve_dataset",
    "resolve_run",
    "run_dir",
    "settings_hash",
    "significant",
    "slug",
    "writable",
]
