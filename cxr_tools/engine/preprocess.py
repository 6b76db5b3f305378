"""Engine of ``cxr preprocess``: decode a dataset once into an HDF5 or memory-mapped cache (docs/design.md).

Why a cache: the seed projects decoded every 1024² PNG in every epoch (~6 ms each, the whole cost of an
epoch on a CPU) and opened every image just to build a label index. Here each image is decoded exactly once,
grayscale → crop/resize → CLAHE → brightness, into a uint8 store read back in ~10–20 µs per image, and the
labels, patients, views and patient-disjoint splits go to ``index.csv`` from the metadata alone.

How the run is shaped so that it scales and survives clusters:

* **Streaming, flat memory.** Inputs are decoded in chunks on a process pool (``--workers``, default every
  available core) with a bounded number of chunks in flight; the parent writes them to the store in input
  order with ``pwrite`` (:class:`~cxr_tools.data.caches.format.ImageStoreWriter`). Nothing holds all images.
* **Resumable after ``kill -9``.** After each flush of the store the parent appends the progress to a journal
  (:class:`~cxr_tools.data.decoding.pipeline.Journal`); ``--resume`` redoes only the unjournaled tail, and
  because inputs map to rows deterministically the result is identical to an uninterrupted run.
* **Shardable.** ``--shard i/n`` processes a contiguous block of the input list into a complete partial cache;
  :func:`merge` concatenates the shards into the cache one unsharded run would have written.
* **Honest about bad inputs.** Unreadable files and CSV rows pointing at missing files go to ``rejected.csv``
  with the reason and are not stored; the result reports them (the CLI exits 3). A run in which every input
  failed is an error. ``manifest.json`` is written last, so an interrupted cache is never mistaken for a
  complete one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.config import fields_from
from cxr_tools.data.caches import format as cache_mod
from cxr_tools.data.caches.build import CACHE_SPEC, assign_split_column, build_manifest, fill_store
from cxr_tools.data.caches.datasets import check_datasets, merge_datasets
from cxr_tools.data.caches.shards import merge_shards, parse_shard, shard_range
from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.data.decoding.pipeline import Journal, JournalState, available_cores, run_fingerprints
from cxr_tools.data.sources import load_source
from cxr_tools.errors import CacheError, ConfigError, DataError
from cxr_tools.runtime.outputs import claim, decide, restart
from cxr_tools.runtime.progress import Progress, null_progress
from cxr_tools.runtime.space import no_space_as_error

log = logging.getLogger(__name__)

JOURNAL = cache_mod.JOURNAL
FORMATS: tuple[str, ...] = tuple(cache_mod.STORE_FILES)
NO_SPACE_HINT = (
    "Free some space there, then rerun the same command with --resume: the images stored so far are kept "
    "and it carries on from them."
)


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of ``cxr preprocess`` (CLI defaults; each recorded in the cache manifest).

    Attributes:
        src: dataset directory (NIH, CheXpert, image folder, DICOM folder or synthetic output).
        output: the cache directory to write.
        source: ``auto`` (detect from the layout) or ``nih``, ``chexpert``, ``folder``, ``dicom``, ``synthetic``.
        metadata: a metadata CSV overriding the one found in ``src``.
        views: views to keep (``frontal``, ``lateral``, ``all`` or codes such as ``PA``, ``AP``).
        size, crop, clahe, clahe_clip, clahe_tile, brightness, jpeg_draft: the image operations
            (:class:`~cxr_tools.data.decoding.imaging.ImageOps`).
        format: ``hdf5`` or ``memmap``.
        seed, fractions: patient-disjoint split when no official split exists.
        workers: decoding processes; None = every available core, 0 = in this process.
        shard: ``"i/n"`` to process only shard ``i`` of ``n`` (SLURM array jobs); merge them with :func:`merge`.
        chunk_size: inputs per work item (latency vs. overhead; does not change the output).
        commit_seconds: how often progress is made durable; after a crash at most this much work is redone.
        resume: continue an incomplete cache at ``output``.
        overwrite: replace an existing cache at ``output``.
    """

    src: Path
    output: Path
    source: str = "auto"
    metadata: Path | None = None
    views: tuple[str, ...] = ("frontal",)
    size: int = 256
    crop: str = "center"
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    jpeg_draft: bool = False
    brightness: float = 0.0
    format: str = "hdf5"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    workers: int | None = None
    shard: str | None = None
    chunk_size: int = 32
    commit_seconds: float = 1.0
    resume: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class PreprocessResult:
    """What a preprocess (or merge) run produced; ``rejected > 0`` means partial success."""

    output: Path
    storage: str
    source_kind: str
    labels: tuple[str, ...]
    image_size: int
    inputs: int
    images: int
    patients: int
    rejected: int
    splits: dict[str, int] = field(default_factory=dict)
    resumed_from: int = 0
    shard: str | None = None
    rejected_file: Path | None = None
    seconds: float = 0.0
    inputs_per_second: float = 0.0
    datasets: dict[str, int] = field(default_factory=dict)  # images per dataset of a cache of several datasets


@dataclass(frozen=True)
class MergeConfig:
    """Settings of ``cxr preprocess --merge``: shard caches (any order), or caches of different datasets (in the
    order given), into one cache at ``output``."""

    shards: tuple[Path, ...]
    output: Path
    overwrite: bool = False


def preprocess(config: PreprocessConfig, progress: Progress | None = None) -> PreprocessResult:
    """Build (or resume) the cache described by ``config``; see the module docstring for the guarantees.

    Raises:
        OutputExistsError: ``output`` holds a complete cache (no ``--overwrite``) or an incomplete one
            (neither ``--resume`` nor ``--overwrite``).
        DataError: no input could be read, or the dataset is malformed.
        CacheError: ``--resume`` with other inputs or settings than the interrupted run.
        NoSpaceError: the disk filled up; the journal keeps what was stored, ``--resume`` carries on.
    """
    with no_space_as_error(config.output, NO_SPACE_HINT):
        return _preprocess(config, progress)


def _preprocess(config: PreprocessConfig, progress: Progress | None) -> PreprocessResult:
    started = time.perf_counter()
    progress = null_progress(progress)
    ops = fields_from(ImageOps, config)
    if config.format not in FORMATS:
        raise ConfigError(f"Unknown cache format '{config.format}'.", f"Use one of: {', '.join(FORMATS)}.")
    if config.chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {config.chunk_size}.")
    if config.workers is not None and config.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {config.workers}.")
    shard = parse_shard(config.shard)
    workers = available_cores() if config.workers is None else config.workers
    out = Path(config.output)
    # --overwrite replaces a complete or incomplete cache; --resume continues an incomplete one (and starts a
    # missing or empty one, so a requeued SLURM job can always pass it); with both, an incomplete cache is
    # resumed and a complete one replaced. Decided before any work, carried out only once the source has
    # loaded: a typo in SRC must not cost the old cache.
    decision = decide(out, CACHE_SPEC, overwrite=config.overwrite, resume=config.resume)
    src = _load_source(config)
    claim(decision)
    resuming = decision.action == "resume"
    table = src.table.reset_index(drop=True)
    split_info = assign_split_column(table, src.labels, seed=config.seed, fractions=config.fractions)
    start, end = shard_range(len(table), shard)
    part = table.iloc[start:end].reset_index(drop=True)
    problems = list(src.problems) if shard is None or shard[0] == 0 else []
    paths = tuple(str(p) for p in part["source_path"])
    if shard is None and not paths:
        cache_mod.write_rejected(out, problems)
        raise DataError(
            f"No images to preprocess in {config.src} ({len(problems)} listed file(s) missing or unreadable).",
            f"Check the source path, --source and --views; see {out / cache_mod.REJECTED}.",
        )

    inputs_sha, run_fp = run_fingerprints(
        table, src.metadata_sha256, ops, config.format, shard, config.seed, config.fractions
    )
    journal = Journal(out / JOURNAL)
    state = JournalState()
    if resuming and journal.exists():
        try:
            state = journal.read(run_fp)
        except CacheError:
            if not config.overwrite:
                raise
            restart(decision)
            resuming = False
    store_path = out / cache_mod.STORE_FILES[config.format]
    if state.done and not store_path.is_file():
        raise CacheError(f"The interrupted cache {out} lacks its image store.", "Start again with --overwrite.")
    if resuming and state.done:
        log.info("Resuming %s: %d of %d inputs already done", out, state.done, len(paths))

    stored, rejected = fill_store(
        out,
        config.format,
        ops,
        paths,
        workers=workers,
        chunk_size=config.chunk_size,
        commit_seconds=config.commit_seconds,
        journal=journal,
        state=state,
        run_fp=run_fp,
        progress=progress,
    )

    # Finish: rejected.csv, index.csv, then manifest.json last (the completion marker).
    rejected_rows = problems + [(paths[i], reason) for i, reason in sorted(rejected)]
    cache_mod.write_rejected(out, rejected_rows)
    keep = np.ones(len(part), dtype=bool)
    keep[[i for i, _ in rejected]] = False
    if int(keep.sum()) != stored:
        raise CacheError(f"Internal inconsistency in {out}: {stored} rows stored, {int(keep.sum())} expected.")
    if shard is None and stored == 0:
        raise DataError(
            f"None of the {len(paths) + len(problems)} inputs in {config.src} could be read.",
            f"See the reasons in {out / cache_mod.REJECTED}.",
        )
    index = part.loc[keep].reset_index(drop=True)
    index.insert(0, "row", np.arange(len(index), dtype=np.int64))
    cache_mod.write_index(out, index, src.labels)
    counts = cache_mod.count_index(index, rejected=len(rejected_rows), inputs=len(paths) + len(problems))
    manifest = build_manifest(
        src,
        views=config.views,
        inputs_sha256=inputs_sha,
        ops=ops,
        storage=config.format,
        splits=split_info,
        counts=counts,
        shard=None
        if shard is None
        else {"index": shard[0], "count": shard[1], "start": start, "end": end, "total": len(table)},
        pixels_sha256=cache_mod.pixel_digest(out, config.format),
    )
    cache_mod.write_manifest(out, manifest)
    journal.remove()
    seconds = time.perf_counter() - started
    done_now = len(paths) - state.done
    return _result(
        out,
        manifest,
        resumed_from=state.done,
        shard=config.shard,
        seconds=seconds,
        rate=done_now / seconds if seconds > 0 else 0.0,
    )


def merge(config: MergeConfig, progress: Progress | None = None) -> PreprocessResult:
    """Merge caches into one: the shard caches of one ``--shard i/n`` run (identical to an unsharded run), or
    complete caches of different datasets (:mod:`cxr_tools.data.caches.datasets`: a dataset column, qualified ids,
    canonical labels). Which one is told by the inputs: all shards, or none."""
    started = time.perf_counter()
    if not config.shards:
        raise ConfigError("No caches given to merge.", "Pass the shard directories, or the caches of each dataset.")
    out = Path(config.output)
    if any(Path(s).resolve() == out.resolve() for s in config.shards):
        raise ConfigError(f"The merge output {out} is one of the inputs.", "Choose a new -o directory.")
    # an existing folder's fate first, whatever the inputs: one that is not ours is refused (decide only locks it);
    # a new output is not created until the inputs have passed their checks
    spec = replace(CACHE_SPEC, resumable=False)
    decision = decide(out, spec, overwrite=config.overwrite) if out.exists() else None
    sharded = [bool(cache_mod.read_tables(s)[0].get("shard")) for s in config.shards]
    if any(sharded) and not all(sharded):
        raise ConfigError(
            "--merge got shard caches and whole caches together.",
            "Join the --shard parts of a run first, then merge the whole caches of different datasets.",
        )
    if not any(sharded) and len(config.shards) < 2:
        raise CacheError(
            f"{config.shards[0]} is not a shard (made without --shard), and one dataset is nothing to merge.",
            "Pass every --shard part of a run, or the caches of two or more datasets.",
        )
    if not any(sharded):
        check_datasets(config.shards)  # before the output is claimed: a wrong input costs nothing
    claim(decision or decide(out, spec, overwrite=config.overwrite))
    if all(sharded):
        manifest = merge_shards(config.shards, out, progress)
    else:
        manifest = merge_datasets(config.shards, out, progress)
    seconds = time.perf_counter() - started
    return _result(out, manifest, seconds=seconds, rate=manifest["counts"]["images"] / seconds if seconds else 0.0)


def _result(
    out: Path, manifest: dict[str, Any], *, seconds: float, rate: float, resumed_from: int = 0, shard: str | None = None
) -> PreprocessResult:
    counts = manifest["counts"]
    return PreprocessResult(
        output=out,
        storage=manifest["storage"],
        source_kind=manifest["source"]["kind"],
        labels=tuple(manifest["labels"]),
        image_size=int(manifest["image_size"][0]),
        inputs=int(counts["inputs"]),
        images=int(counts["images"]),
        patients=int(counts["patients"]),
        rejected=int(counts["rejected"]),
        splits=dict(counts["splits"]),
        resumed_from=resumed_from,
        shard=shard,
        rejected_file=out / cache_mod.REJECTED,
        seconds=round(seconds, 3),
        inputs_per_second=round(rate, 1),
        datasets={k: int(v["images"]) for k, v in (counts.get("datasets") or {}).items()},
    )


def _load_source(config: PreprocessConfig) -> Any:
    return load_source(Path(config.src), config.source, views=tuple(config.views), metadata=config.metadata)
