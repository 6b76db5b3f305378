"""Building a cache: the decode-into-store loop with its journal, the split record and the manifest.

``cxr preprocess`` (``cxr_tools.engine.preprocess``) orchestrates; the work it orchestrates lives here, next to
the format it writes (:mod:`cxr_tools.data.caches.format`). The loop decodes inputs in chunks on a process pool
(:func:`~cxr_tools.data.decoding.pipeline.ordered_map`), writes them to the store in input order and, every
``commit_seconds``, makes the store durable and then journals the progress, so a rerun after ``kill -9`` redoes
only the unjournaled tail and ends with the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_tools import __version__
from cxr_tools.data.caches import format as cache_mod
from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.data.decoding.pipeline import ChunkTask, Journal, JournalState, ordered_map, process_chunk
from cxr_tools.runtime.outputs import OutputSpec, previous_release
from cxr_tools.runtime.progress import Progress

#: Files a (partial) cache directory may hold; anything else means it is not ours to resume into.
CACHE_FILES: frozenset[str] = frozenset(
    {
        cache_mod.MANIFEST,
        cache_mod.INDEX,
        cache_mod.REJECTED,
        cache_mod.JOURNAL,
        "meta_split.json",
        *cache_mod.STORE_FILES.values(),
    }
)
#: The output spec of a cache (:mod:`cxr_tools.runtime.outputs`): complete once its manifest is written;
#: ``--resume`` continues an interrupted one, also with ``--overwrite`` (a requeued job passes both).
CACHE_SPEC = OutputSpec(
    command="preprocess",
    what="cache",
    writes=tuple(sorted(CACHE_FILES)),
    complete=cache_mod.is_complete,
    resumable=True,
    resume_first=True,
    recognise=previous_release("cache"),
)


def fill_store(
    out: Path,
    storage: str,
    ops: ImageOps,
    paths: tuple[str, ...],
    *,
    workers: int,
    chunk_size: int,
    commit_seconds: float,
    journal: Journal,
    state: JournalState,
    run_fp: str,
    progress: Progress,
) -> tuple[int, list[tuple[int, str]]]:
    """Decode ``paths[state.done:]`` into the store, committing progress to the journal.

    Returns the number of rows stored and the ``(input position, reason)`` of every rejected input.
    """
    size = int(ops.size)
    rows = len(paths)
    if state.done == len(paths) and cache_mod.ImageStoreWriter.existing_rows(out, storage) == state.stored:
        rows = state.stored  # interrupted after the store was shrunk, before the manifest
    store = cache_mod.ImageStoreWriter(out, storage, rows, size, size, resume=state.done > 0)
    journal.open(run_fp, state)
    done, stored, rejected = state.done, state.stored, list(state.rejected)
    try:
        with progress.task("preprocess", total=len(paths)) as task:
            if done:
                task.advance(done)
            tasks = (ChunkTask(i, paths[i : i + chunk_size], ops) for i in range(done, len(paths), chunk_size))
            pending: list[tuple[int, str]] = []
            last_commit = time.monotonic()
            for res in ordered_map(process_chunk, tasks, workers):
                store.write_block(stored, res.images)
                stored += len(res.images)
                done = res.start + res.count
                pending.extend(res.rejected)
                rejected.extend(res.rejected)
                task.advance(res.count)
                if time.monotonic() - last_commit >= commit_seconds:
                    store.flush(durable=True)
                    journal.commit(done, stored, pending)
                    pending, last_commit = [], time.monotonic()
            if done > state.done or pending:
                store.flush(durable=True)
                journal.commit(done, stored, pending)
        store.truncate(stored)
    finally:
        store.close()
        journal.close()
    return stored, rejected


def assign_split_column(table: Any, labels: Sequence[str], *, seed: int, fractions: Sequence[float]) -> dict[str, Any]:
    """Fill ``table["split"]`` (patient-disjoint, official lists honoured) on the *whole* input list and return
    the manifest's record of how."""
    from cxr_tools.data.splits.patients import assign_splits

    official = bool((table["split"].fillna("").astype(str).str.strip() != "").any())
    table["split"] = assign_splits(table, seed=seed, fractions=tuple(fractions), labels=tuple(labels)).astype(str)
    return {
        "method": "official+patient" if official else "patient",
        "seed": seed,
        "fractions": [float(f) for f in fractions],
        "stratified": True,
    }


def build_manifest(
    src: Any,
    *,
    views: Sequence[str],
    inputs_sha256: str,
    ops: ImageOps,
    storage: str,
    splits: Mapping[str, Any],
    counts: Mapping[str, Any],
    shard: Mapping[str, int] | None,
    pixels_sha256: str,
) -> dict[str, Any]:
    """The ``manifest.json`` of a cache built from source ``src`` (a loaded :mod:`cxr_tools.data.sources` source);
    ``pixels_sha256`` is :func:`~cxr_tools.data.caches.format.pixel_digest` of the finished store."""
    return {
        "tool": "cxr-tools",
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {
            "kind": src.kind,
            "root": str(Path(src.root).resolve()),
            "metadata_file": src.metadata_file.name if src.metadata_file is not None else None,
            "metadata_sha256": src.metadata_sha256,
            "metadata_files": {Path(k).name: v for k, v in sorted(src.metadata_files.items())},
            "views": list(views),
        },
        "inputs_sha256": inputs_sha256,
        "labels": list(src.labels),
        "image_size": [ops.size, ops.size],
        "dtype": "uint8",
        "preprocessing": {"grayscale": True, "interpolation": "area", **ops.to_dict()},
        "storage": storage,
        "store_file": cache_mod.STORE_FILES[storage],
        "splits": dict(splits),
        "counts": dict(counts),
        "shard": None if shard is None else dict(shard),
        cache_mod.PIXELS_DIGEST: pixels_sha256,
    }
