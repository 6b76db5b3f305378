"""The streaming machinery behind ``cxr preprocess``: chunked decoding in worker processes and a resume journal.

Three pieces, each small enough to reason about after a ``kill -9``:

* :func:`process_chunk` decodes and preprocesses a run of consecutive inputs in a worker and returns the
  kept images as one uint8 block plus the rejected inputs with their reasons. A bad file never raises.
* :func:`ordered_map` runs it on a process pool and yields results **in input order** with a bounded number
  of chunks in flight, so the parent writes rows sequentially and memory stays flat however many images
  there are (``Pool.imap`` would read ahead without limit when the writer is slower than the workers).
* :class:`Journal` is an append-only log of committed progress (inputs done, rows stored, rejections). The
  parent appends to it only after the image store has been flushed, so every journaled row is on disk; after
  a crash only the unjournaled tail is redone, and because inputs are processed in a fixed order into fixed
  rows, the resumed cache is identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr_tools.errors import CacheError, ResourceError
from cxr_tools.runtime.workers import exit_with

T = TypeVar("T")
R = TypeVar("R")

JOURNAL_VERSION = 1


# --- worker side ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkTask:
    """Inputs ``start .. start + len(paths)`` (positions in the run's input list) to decode with ``ops``."""

    start: int
    paths: tuple[str, ...]
    ops: Any  # cxr_tools.data.decoding.imaging.ImageOps (picklable, frozen)


@dataclass(frozen=True)
class ChunkResult:
    """What a worker sends back: the kept images in input order and ``(position, reason)`` for the others."""

    start: int
    count: int
    images: np.ndarray
    rejected: tuple[tuple[int, str], ...] = ()


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Decode and preprocess every input of ``task``; unreadable inputs are reported, never raised."""
    from cxr_tools.data.decoding.imaging import load_image

    if multiprocessing.parent_process() is not None:
        keep_freed_memory()

    size = int(task.ops.size)
    images = np.empty((len(task.paths), size, size), dtype=np.uint8)
    kept = 0
    rejected: list[tuple[int, str]] = []
    for offset, path in enumerate(task.paths):
        try:
            img = load_image(path, task.ops)
        except Exception as exc:  # one bad file must not stop the batch; its reason goes to rejected.csv
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            rejected.append((task.start + offset, str(reason).replace("\n", " ")))
            continue
        if img.shape != (size, size) or img.dtype != np.uint8:
            rejected.append((task.start + offset, f"preprocessing gave {img.dtype} {img.shape}, not uint8 [{size}]²"))
            continue
        images[kept] = img
        kept += 1
    return ChunkResult(task.start, len(task.paths), images[:kept].copy(), tuple(rejected))


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for reuse (up to 64 MiB in all) in this process.

    Every image allocates a few MB (the file's bytes, the decoded pixels, a copy) and frees them. By default glibc
    returns such blocks to the kernel (``mmap`` for blocks over 128 KiB at first, trimming the heap's top), so the
    next image page-faults its buffers in again: ~600 faults, ~1.6 ms CPU per 1024² PNG measured, a fifth of a
    worker's time (docs/benchmarks.md, Preprocess). Pixels are unchanged. Done once per worker process; False
    where there is no glibc ``mallopt`` (macOS, Windows; musl ignores it).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) & bool(mallopt(_M_TRIM_THRESHOLD, 64 << 20))


def decode_only(paths: Sequence[str], decoder: str = "opencv") -> int:
    """Decode every path and drop the pixels: grey ``cv2.imread`` (``opencv``, the limit ``benchmarks/preprocess.py``
    compares ``cxr preprocess`` with), or Wuffs (``wuffs``) or libspng (``spng``) on the file's bytes, the PNG
    decoders preprocess uses; returns how many decoded."""
    import cv2

    from cxr_tools.data.decoding.imaging import decode_png_spng, decode_png_wuffs

    fast = {"wuffs": decode_png_wuffs, "spng": decode_png_spng}.get(decoder)
    n = 0
    for p in paths:
        if fast is not None:
            with open(p, "rb", buffering=0) as fh:
                n += fast(fh.read()) is not None
        elif cv2.imread(p, cv2.IMREAD_GRAYSCALE) is not None:
            n += 1
    return n


def _init_worker(starter: int) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with(starter)  # a starter killed with -9 shuts nothing down: leave with it (runtime.workers)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(1)  # one process per core already; OpenCV threads would only contend


def available_cores() -> int:
    """CPU cores this process may use (honours SLURM / cgroup CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _context() -> Any:
    """``forkserver`` where available: workers start from a clean interpreter with cv2 preloaded, never from a
    fork of a parent that may hold threads (OpenCV, torch) or an open HDF5 file."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # a module that is not installed (pywuffs and pyspng are optional at run time) is skipped by the forkserver
        preload = [
            "cxr_tools.data.decoding.pipeline",
            "cxr_tools.data.decoding.imaging",
            "cv2",
            "pywuffs",
            "pyspng",
            "numpy",
        ]
        ctx.set_forkserver_preload(preload)
        return ctx
    return multiprocessing.get_context("spawn")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, *, in_flight: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` processes, results in input order, at most ``in_flight`` pending.

    ``workers=0`` runs in this process (same results, easier to debug). A worker that dies (killed for memory,
    a crashing decoder) raises :class:`ResourceError`.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    limit = max(1, in_flight if in_flight is not None else 2 * workers)
    iterator = iter(items)
    pending: deque[Future[R]] = deque()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=_context(), initializer=_init_worker, initargs=(os.getpid(),)
    )
    try:
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                break
        while pending:
            try:
                result = pending.popleft().result()
            except BrokenProcessPool as exc:
                raise ResourceError(
                    "A worker process died (killed for memory, a crashing decoder, or, when called from Python, "
                    "a main script that lacks an `if __name__ == '__main__':` guard).",
                    "Rerun with --resume, with fewer --workers if memory is short (or workers=0 from Python).",
                ) from exc
            nxt = next(iterator, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))  # type: ignore[arg-type]
            yield result
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


# --- journal --------------------------------------------------------------------------------------------------


def fingerprint(payload: Any) -> str:
    """SHA-256 of a JSON-serialisable description of a run (inputs and every setting that changes the output)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_fingerprints(
    table: Any, metadata_sha256: Any, ops: Any, storage: str, shard: Any, seed: int, fractions: Sequence[float]
) -> tuple[str, str]:
    """``(inputs_sha256, run fingerprint)`` of a preprocess run: a resume must match both (same inputs, metadata,
    image operations, storage format, shard, split seed and fractions)."""
    inputs_sha = fingerprint({"ids": list(table["image_id"]), "paths": list(table["source_path"])})
    run = {
        "inputs": inputs_sha,
        "metadata": metadata_sha256,
        "ops": ops.to_dict(),
        "format": storage,
        "shard": shard,
        "seed": seed,
        "fractions": list(fractions),
    }
    return inputs_sha, fingerprint(run)


@dataclass
class JournalState:
    """Committed progress: the first ``done`` inputs are processed, into the first ``stored`` rows."""

    done: int = 0
    stored: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


class Journal:
    """An append-only progress log: a header line with the run's fingerprint, then one JSON line per commit.

    A line torn by a crash is ignored on reading (and dropped when the journal is reopened), so the state
    read back is always the last complete commit.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self, expected_fingerprint: str) -> JournalState:
        """The last committed state; :class:`CacheError` when the journal belongs to a different run."""
        lines = self.path.read_bytes().split(b"\n")
        complete = lines[:-1]  # the text after the last newline is a torn (or empty) line
        try:
            header = json.loads(complete[0]) if complete else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("journal") != JOURNAL_VERSION:
            raise CacheError(
                f"The progress journal {self.path} is unreadable.", "Start again with --overwrite instead of --resume."
            )
        if header.get("fingerprint") != expected_fingerprint:
            raise CacheError(
                f"The interrupted run in {self.path.parent} used other inputs or settings.",
                "Rerun with exactly the same arguments to resume, or pass --overwrite to start again.",
            )
        state = JournalState()
        for raw in complete[1:]:
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                break
            state.done, state.stored = int(entry["done"]), int(entry["stored"])
            state.rejected.extend((int(i), str(r)) for i, r in entry.get("rejected", []))
        return state

    def open(self, fp: str, state: JournalState | None = None) -> None:
        """Start the journal afresh (atomically), holding ``state`` as its first commit when resuming."""
        from cxr_tools.runtime.fs import atomic_write_text

        lines = [json.dumps({"journal": JOURNAL_VERSION, "fingerprint": fp})]
        if state is not None and state.done:
            lines.append(_entry(state.done, state.stored, state.rejected))
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def commit(self, done: int, stored: int, rejected: Sequence[tuple[int, str]], *, durable: bool = True) -> None:
        """Record progress; call only after the rows it covers are flushed to the store."""
        if self._fd is None:
            raise CacheError("The progress journal is not open.")
        data = (_entry(done, stored, rejected) + "\n").encode("utf-8")
        while data:  # a write may be short on a disk filling up; a line torn by the error that ends it is ignored
            data = data[os.write(self._fd, data) :]
        if durable:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _entry(done: int, stored: int, rejected: Sequence[tuple[int, str]]) -> str:
    return json.dumps({"done": done, "stored": stored, "rejected": [list(r) for r in rejected]})
