"""Sharded preprocessing for SLURM array jobs: which inputs a shard owns, and merging shards into one cache.

``cxr preprocess SRC -o PART_i --shard i/n`` (``i`` from 0, e.g. ``$SLURM_ARRAY_TASK_ID/$N`` with
``--array=0-(N-1)``) writes a complete cache of the inputs ``[i*N_in//n, (i+1)*N_in//n)`` of the full input
list. Splits and the inputs' fingerprint are computed on the *whole* list by every shard, so a patient's split
does not depend on how the work was cut. Contiguous blocks make the merge a plain concatenation in shard
order, giving the same images, index and manifest as one unsharded run (creation time aside).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.caches import format as cache_mod
from cxr_tools.errors import CacheError, ConfigError
from cxr_tools.runtime.progress import Progress, null_progress

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# Manifest keys allowed to differ between shards of one run (everything else must match).
_PER_SHARD_KEYS = ("created", "counts", "shard", cache_mod.PIXELS_DIGEST, cache_mod.CHECKSUMS)
_COPY_BLOCK = 256


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``"slurm"`` reads the array task; None or empty -> None.

    ``slurm`` takes ``i`` and ``n`` from ``SLURM_ARRAY_TASK_ID`` / ``_MIN`` / ``_STEP`` / ``_COUNT``, so
    ``sbatch --array=1-8 ... cxr preprocess SRC -o parts/$SLURM_ARRAY_TASK_ID --shard slurm`` just works.
    """
    if text is None or not str(text).strip():
        return None
    if str(text).strip().lower() == "slurm":
        return _slurm_shard(os.environ if env is None else env)
    m = _SHARD.match(str(text))
    if not m:
        raise ConfigError(
            f"Cannot read shard '{text}'.", "Write --shard i/n with i from 0 (e.g. --shard 0/4), or --shard slurm."
        )
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ConfigError(
            f"Shard {i}/{n} is out of range.", f"Shard indices run from 0 to {max(n - 1, 0)} (e.g. SLURM --array=0-3)."
        )
    return i, n


def _slurm_shard(env: Mapping[str, str]) -> tuple[int, int]:
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    except (KeyError, ValueError):
        raise ConfigError(
            "--shard slurm needs a SLURM array job (SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set).",
            "Submit with sbatch --array=0-(N-1), or give the shard as --shard i/N.",
        ) from None
    i = (task - first) // max(step, 1)
    if not 0 <= i < count:
        raise ConfigError(f"SLURM array task {task} does not map to a shard of {count}.", "Use --shard i/N.")
    return i, count


def shard_range(total: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """The block ``[start, end)`` of a list of ``total`` inputs that ``shard`` owns (everything when None)."""
    if shard is None:
        return 0, total
    i, n = shard
    return i * total // n, (i + 1) * total // n


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in _PER_SHARD_KEYS}


def check_shards(readers: Sequence[cache_mod.CacheReader]) -> list[cache_mod.CacheReader]:
    """Validate that ``readers`` are all shards of one run, each once; return them in shard order."""
    if not readers:
        raise ConfigError("No shard caches given to merge.", "Pass every shard directory, e.g. part_*/.")
    infos = []
    for r in readers:
        info = r.manifest.get("shard")
        if not info:
            raise CacheError(f"{r.path} is not a shard (made without --shard).", "Merge only --shard outputs.")
        infos.append(info)
    n = int(infos[0]["count"])
    ordered = sorted(zip(infos, readers, strict=True), key=lambda t: int(t[0]["index"]))
    indices = [int(info["index"]) for info, _ in ordered]
    if any(int(info["count"]) != n for info in infos) or indices != list(range(n)):
        have = ", ".join(f"{int(i['index'])}/{int(i['count'])}" for i in infos)
        raise CacheError(
            f"The shards given ({have}) are not exactly shards 0..{n - 1} of {n}.",
            "Pass every shard directory once (a missing shard must be run first).",
        )
    reference = _comparable(ordered[0][1].manifest)
    for _, r in ordered[1:]:
        if _comparable(r.manifest) != reference:
            diff = sorted(
                k
                for k in set(reference) | set(r.manifest)
                if k not in _PER_SHARD_KEYS and reference.get(k) != r.manifest.get(k)
            )
            raise CacheError(
                f"Shard {r.path} was made from other inputs or with other settings ({', '.join(diff)} differ).",
                "Rerun every shard with the same arguments (only --shard may differ).",
            )
    return [r for _, r in ordered]


def copy_images(readers: Sequence[cache_mod.CacheReader], output: Path, progress: Progress) -> None:
    """Write the images of ``readers``, one after the other, into a new store in ``output`` (the first reader's
    storage kind), in blocks so memory stays flat; durable when it returns."""
    first = readers[0]
    height, width = first.image_shape
    total = sum(len(r) for r in readers)
    with (
        cache_mod.ImageStoreWriter(output, first.storage, total, height, width) as store,
        progress.task("merge", total=total) as task,
    ):
        row = 0
        for r in readers:
            for start in range(0, len(r), _COPY_BLOCK):
                block = r.read(np.arange(start, min(start + _COPY_BLOCK, len(r))))
                store.write_block(row, block)
                row += len(block)
                task.advance(len(block))
        store.flush(durable=True)


def merge_shards(
    shard_dirs: Sequence[str | Path], output: str | Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Concatenate shard caches into the (prepared, empty) directory ``output``; return its manifest.

    Images are copied in blocks, so memory stays flat; the manifest is written last.
    """
    import pandas as pd

    progress = null_progress(progress)
    readers = check_shards([cache_mod.open_cache(p) for p in shard_dirs])
    try:
        first = readers[0]
        storage = first.storage
        out = Path(output)
        copy_images(readers, out, progress)
        index = pd.concat([r.index for r in readers], ignore_index=True)
        index["row"] = np.arange(len(index), dtype=np.int64)
        rejected = pd.concat([cache_mod.read_rejected(r.path) for r in readers], ignore_index=True)
        labels = first.labels
        cache_mod.write_index(out, index, labels)
        cache_mod.write_rejected(out, rejected.itertuples(index=False, name=None))
        manifest = {k: v for k, v in first.manifest.items() if k != "schema_version"}
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["counts"] = cache_mod.count_index(
            cache_mod.read_index(out / cache_mod.INDEX),
            rejected=len(rejected),
            inputs=sum(int(r.manifest["counts"]["inputs"]) for r in readers),
        )
        manifest["shard"] = None
        manifest[cache_mod.PIXELS_DIGEST] = cache_mod.pixel_digest(out, storage)
        cache_mod.write_manifest(out, manifest)
        return manifest
    finally:
        for r in readers:
            r.close()
