"""The preprocessed image cache: manifest, index, image store, and one reader for both storage kinds.

Layout (docs/design.md, schema version :data:`SCHEMA_VERSION`)::

    CACHE/manifest.json   written last and atomically; a cache without it is incomplete
    CACHE/index.csv       one row per stored image, in storage order
    CACHE/images.h5       dataset "images", uint8 [N, H, W], chunks (1, H, W)        (storage "hdf5")
    CACHE/images.npy      uint8 [N, H, W], opened with mmap_mode="r"                 (storage "memmap")
    CACHE/rejected.csv    inputs that could not be read, with the reason

Why decode once: the seed projects decoded 1024² PNGs every epoch (~6 ms each); a cached 224² read is
~10–20 µs. Labels are stored raw (1, 0, -1, empty) and the uncertainty policy is applied at load time
(:func:`cxr_tools.data.labels.apply_uncertainty`), so one cache serves every policy.

A cache is identified by its *content* (:func:`content_digests`: image ids, patients, labels, splits, the pixel
digest the manifest records as :data:`PIXELS_DIGEST`, preprocessing), never by its manifest's timestamp, tool
version or source path: episode lists are addressed by that fingerprint, so a byte-identical re-preprocessed cache
gives the same episodes and ``cxr compare`` accepts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.errors import CacheError
from cxr_tools.runtime.fs import atomic_path, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.csv"
REJECTED = "rejected.csv"
JOURNAL = "preprocess.journal"  # an unfinished `cxr preprocess` (its progress; removed when the cache completes)
STORE_FILES = {"hdf5": "images.h5", "memmap": "images.npy"}
H5_DATASET = "images"
INDEX_META_COLUMNS: tuple[str, ...] = (
    "row",
    "image_id",
    "source_path",
    "patient_id",
    "study",
    "view",
    "sex",
    "age",
    "split",
)
#: Column of a cache holding several datasets (``cxr preprocess --merge``): the dataset each row came from. Its
#: ``image_id``, ``patient_id`` and ``study`` are then qualified, ``DATASET:ID``
#: (:mod:`cxr_tools.data.caches.datasets`).
DATASET_COLUMN = "dataset"
# Read these as strings so ids like "00000001" keep their zeros.
_STRING_COLUMNS = ("image_id", "source_path", "patient_id", "study", "view", "sex", "split", DATASET_COLUMN)


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a finished cache (its manifest exists)."""
    return (Path(path) / MANIFEST).is_file()


def require_complete(path: str | Path) -> Path:
    """``path`` if it holds a finished cache; else a :class:`CacheError` that tells a missing folder, a folder
    that is no cache at all (a raw dataset passed by mistake) and an interrupted ``cxr preprocess`` apart."""
    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"Cache {path} does not exist.", "Create it with `cxr preprocess SRC -o CACHE`.")
    if is_complete(path):
        return path
    started = any((path / name).exists() for name in (INDEX, JOURNAL, *STORE_FILES.values()))
    if not started:
        raise CacheError(
            f"{path} is not a cxr cache (no {MANIFEST}, no images.h5 / images.npy).",
            f"Preprocess the dataset first: `cxr preprocess {path} -o CACHE`, then pass CACHE.",
        )
    raise CacheError(
        f"Cache {path} is incomplete (no {MANIFEST}): an interrupted `cxr preprocess`?",
        "Finish it with `cxr preprocess ... --resume`, or recreate it with --overwrite.",
    )


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically; call this last, it marks the cache complete. Its ``checksums`` are
    computed here, from the files as they lie on disk (any given are replaced)."""
    data = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in manifest.items() if k != CHECKSUMS}}
    data[CHECKSUMS] = compute_checksums(path, manifest.get("storage"))
    return atomic_write_json(Path(path) / MANIFEST, data)


# --- checksums: what `cxr stats --verify` checks -------------------------------------------------------------

CHECKSUMS = "checksums"
#: Rows per image checksum: a damaged block names its rows; 256 rows of 256² are 16 MiB.
CHECKSUM_BLOCK_ROWS = 256


def _image_blocks(path: str | Path, storage: str) -> Iterable[tuple[int, np.ndarray]]:
    """``(first row, uint8 rows)`` of a store, :data:`CHECKSUM_BLOCK_ROWS` at a time, read as a reader sees them."""
    store = Path(path) / STORE_FILES[storage]
    if storage == "hdf5":
        with open_h5_readonly(store) as fh:
            data = fh[H5_DATASET]
            for start in range(0, data.shape[0], CHECKSUM_BLOCK_ROWS):
                yield start, data[start : start + CHECKSUM_BLOCK_ROWS]
    else:
        arr = np.load(store, mmap_mode="r")
        for start in range(0, arr.shape[0], CHECKSUM_BLOCK_ROWS):
            yield start, np.asarray(arr[start : start + CHECKSUM_BLOCK_ROWS])


def compute_checksums(path: str | Path, storage: str | None) -> dict[str, Any]:
    """The manifest's ``checksums`` of the cache files in ``path``: SHA-256 of ``index.csv`` and ``rejected.csv``,
    and of the image rows in blocks of :data:`CHECKSUM_BLOCK_ROWS` (of the pixels, so independent of the
    store's layout on disk)."""
    path = Path(path)
    files = {name: file_sha256(path / name) for name in (INDEX, REJECTED) if (path / name).is_file()}
    images = []
    if storage in STORE_FILES and (path / STORE_FILES[storage]).is_file():
        images = [hashlib.sha256(np.ascontiguousarray(b).data).hexdigest() for _, b in _image_blocks(path, storage)]
    return {"algorithm": "sha256", "files": files, "rows_per_block": CHECKSUM_BLOCK_ROWS, "images": images}


def verify_cache(path: str | Path) -> list[str]:
    """Check a cache against the checksums of its manifest; one line per damaged file (none when whole).

    Raises:
        CacheError: no checksums to check against (a cache made before they were recorded).
    """
    path = require_complete(path)
    redo = "recreate the cache (`cxr preprocess ... --overwrite`)"
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{path / MANIFEST}: unreadable ({exc}); {redo}."]
    sums = manifest.get(CHECKSUMS) if isinstance(manifest, dict) else None
    if not isinstance(sums, dict):
        raise CacheError(
            f"Cache {path} records no checksums (made by an older cxr-tools), so it cannot be verified.",
            "Recreate it with `cxr preprocess ... --overwrite` to record them.",
        )
    problems = []
    for name, expected in (sums.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing; {redo}.")
        elif file_sha256(file) != expected:
            problems.append(f"{file}: does not match its checksum (damaged or edited); {redo}.")
    storage = str(manifest.get("storage"))
    store = path / STORE_FILES.get(storage, "images")
    expected_blocks = list(sums.get("images") or [])
    bad: list[str] = []
    try:
        seen = 0
        for (start, block), want in zip(_image_blocks(path, storage), expected_blocks, strict=False):
            seen += 1
            if hashlib.sha256(np.ascontiguousarray(block).data).hexdigest() != want:
                bad.append(f"{start}-{start + len(block) - 1}")
        rows = ImageStoreWriter.existing_rows(path, storage)
        if seen != len(expected_blocks) or rows is None or -(-rows // CHECKSUM_BLOCK_ROWS) != len(expected_blocks):
            problems.append(f"{store}: holds {rows} rows, not what its checksums cover (truncated?); {redo}.")
        elif bad:
            rows_text = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
            problems.append(
                f"{store}: rows {rows_text} do not match their checksums ({len(bad)} of {seen} blocks damaged); {redo}."
            )
    except (OSError, ValueError, KeyError, CacheError) as exc:
        problems.append(f"{store}: unreadable ({_first_line(exc)}); {redo}.")
    return problems


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def check_index_checksum(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse an ``index.csv`` that is not the one the manifest records: a flipped label must never be read."""
    expected = ((manifest.get(CHECKSUMS) or {}).get("files") or {}).get(INDEX)
    if expected is not None and file_sha256(path / INDEX) != expected:
        raise CacheError(
            f"{path / INDEX} does not match the checksum in its manifest (damaged or edited).",
            f"Check the whole cache with `cxr stats {path} --verify`; "
            "recreate it with `cxr preprocess ... --overwrite`.",
        )


def manifest_hash(manifest: dict[str, Any]) -> str:
    """A short, stable hash of a manifest (recorded by models trained on the cache)."""
    text = json.dumps(manifest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: The manifest field holding :func:`pixel_digest` of the image store (recorded by ``cxr preprocess``).
PIXELS_DIGEST = "pixels_sha256"
#: Version of :func:`content_digests` (part of every fingerprint, so a change of recipe never collides).
CONTENT_VERSION = 1
_DIGEST_BLOCK_BYTES = 16 << 20  # as the checksum blocks: the writer's memory stays flat


def pixel_digest(cache_dir: str | Path, storage: str) -> str:
    """sha256 of a cache's pixels: ``uint8 N x H x W`` then every image's bytes in row order (C order).

    Independent of the storage kind (HDF5 or ``.npy`` give the same digest for the same pixels) and read in
    blocks of ~16 MiB, so memory stays flat; ~1.5 GB/s, a few seconds for a 224 px NIH cache.
    """
    path = Path(cache_dir) / STORE_FILES[storage]
    if storage == "hdf5":
        fh = open_h5_readonly(path)
        arr = fh[H5_DATASET]
    else:
        fh, arr = None, np.load(path, mmap_mode="r")
    try:
        n, height, width = (int(v) for v in arr.shape)
        digest = hashlib.sha256(f"uint8 {n}x{height}x{width}\n".encode())
        step = max(1, _DIGEST_BLOCK_BYTES // max(1, height * width))
        for start in range(0, n, step):
            digest.update(np.ascontiguousarray(arr[start : start + step], dtype=np.uint8).data)
        return digest.hexdigest()
    finally:
        if fh is not None:
            fh.close()


def _column_digest(values: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(values).encode("utf-8")).hexdigest()


def content_digests(manifest: dict[str, Any], index: Any, pixels: str) -> dict[str, str]:
    """What a cache holds, part by part, each a sha256: what identifies its episodes (docs/design.md).

    ``rows`` (image ids in storage order), ``patients``, ``labels`` (label names, then the raw values 1 / 0 / -1
    as little-endian float64, empty as +inf), ``splits``, ``pixels`` (:func:`pixel_digest`) and ``preprocessing``
    (the manifest's ``preprocessing`` and ``image_size``). Never timestamps, tool versions, source paths or the
    storage kind, so a byte-identical re-preprocessed cache gives the same parts, and two caches that differ say
    where.
    """
    labels = [str(c) for c in manifest.get("labels") or []]
    rows = index.sort_values("row", kind="stable") if "row" in index.columns else index
    values = rows[labels].to_numpy(dtype=np.float64, na_value=np.nan) if labels else np.zeros((len(rows), 0))
    values = np.where(np.isnan(values), np.inf, values) + 0.0  # one bit pattern for "empty" and for zero
    label_digest = hashlib.sha256(json.dumps([labels, list(values.shape)]).encode())
    label_digest.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    preprocessing = {"preprocessing": manifest.get("preprocessing") or {}, "image_size": manifest.get("image_size")}
    return {
        "version": str(CONTENT_VERSION),
        "rows": _column_digest(rows["image_id"].astype(str)),
        "patients": _column_digest(rows["patient_id"].astype(str)),
        "labels": label_digest.hexdigest(),
        "splits": _column_digest(rows["split"].astype(str)),
        "pixels": pixels,
        "preprocessing": hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest(),
    }


def content_fingerprint(parts: dict[str, str]) -> str:
    """One short hash of :func:`content_digests` (what episode lists are addressed by)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def read_index(path: str | Path) -> Any:
    """Read ``index.csv`` with id columns as strings and labels as floats (NaN = not mentioned)."""
    import pandas as pd

    dtypes = dict.fromkeys(_STRING_COLUMNS, "string")
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=True)
    for col in _STRING_COLUMNS:
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    return df


REJECTED_COLUMNS: tuple[str, ...] = ("source_path", "reason")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def write_index(cache_dir: str | Path, index: Any, labels: Sequence[str]) -> Path:
    """Write ``index.csv`` atomically: :data:`INDEX_META_COLUMNS`, :data:`DATASET_COLUMN` when the index has it,
    then ``labels``, labels as 1 / 0 / -1 / empty."""
    import pandas as pd

    missing = [c for c in (*INDEX_META_COLUMNS, *labels) if c not in index.columns]
    if missing:
        raise CacheError(f"The index lacks column(s) {', '.join(missing)}.")
    extra = [DATASET_COLUMN] if DATASET_COLUMN in index.columns else []
    df = index.loc[:, [*INDEX_META_COLUMNS, *extra, *labels]].copy()
    df["row"] = df["row"].astype("int64")
    df["age"] = _maybe_int(pd.to_numeric(df["age"], errors="coerce"))
    for col in labels:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    target = Path(cache_dir) / INDEX
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)
    return target


def _maybe_int(values: Any) -> Any:
    """Whole numbers as nullable integers (``58`` rather than ``58.0``); anything fractional stays float."""
    finite = values.dropna()
    if len(finite) and (finite == finite.round()).all():
        return values.astype("Int64")
    return values


def write_rejected(cache_dir: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """Write ``rejected.csv`` (``source_path``, ``reason``) atomically; written even when empty."""
    import csv

    target = Path(cache_dir) / REJECTED
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(REJECTED_COLUMNS)
        for path, reason in rows:
            writer.writerow((str(path), str(reason)))
    return target


def read_rejected(cache_dir: str | Path) -> Any:
    """``rejected.csv`` of a cache as a DataFrame (empty when the file is absent)."""
    import pandas as pd

    path = Path(cache_dir) / REJECTED
    if not path.is_file():
        return pd.DataFrame(columns=list(REJECTED_COLUMNS), dtype=str)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def count_index(index: Any, *, rejected: int, inputs: int) -> dict[str, Any]:
    """The manifest's ``counts``: inputs listed, images stored, patients, rejected, images per split."""
    splits = index["split"].fillna("").astype(str)
    per_split = {name: int((splits == name).sum()) for name in SPLIT_NAMES}
    for name in sorted(set(splits) - set(SPLIT_NAMES)):
        per_split[name or "none"] = int((splits == name).sum())
    counts: dict[str, Any] = {
        "inputs": int(inputs),
        "images": len(index),
        "patients": int(index["patient_id"].fillna("").astype(str).nunique()),
        "rejected": int(rejected),
        "splits": per_split,
    }
    if DATASET_COLUMN in index.columns:  # a cache of several datasets: images and patients of each
        groups = index.groupby(index[DATASET_COLUMN].astype(str), sort=False)["patient_id"]
        counts["datasets"] = {str(k): {"images": int(g.size), "patients": int(g.nunique())} for k, g in groups}
    return counts


class ImageStoreWriter:
    """Writes images into a pre-sized store by row; reopening with ``resume=True`` keeps what is there.

    Built for long, interruptible runs and full disks. Rows go to the file with ``pwrite`` whatever the format:
    for ``.npy`` after its header, for HDF5 at the offsets of the dataset's chunks, which HDF5 allocates when the
    dataset is created (``ALLOC_TIME_EARLY``, one uncompressed chunk per image). HDF5 itself writes only metadata,
    when the store is created (after :func:`~cxr_tools.runtime.space.check_room`) and when it is shrunk: it cannot
    close a file whose metadata it failed to write (a full disk), keeps the file open and crashes the interpreter
    in its finaliser (SIGSEGV), so it is never left to meet a full disk while rows are written. A failed
    ``pwrite`` is an ordinary ``OSError``; a ``kill -9`` between :meth:`flush` calls corrupts nothing (no
    metadata changes while rows are written), and written pages do not accumulate in the writer's memory.
    :meth:`truncate` shrinks the store to the rows actually kept (inputs that failed leave no row).
    """

    def __init__(self, cache_dir: str | Path, storage: str, n: int, height: int, width: int, *, resume: bool = False):
        if storage not in STORE_FILES:
            raise CacheError(f"Unknown cache format '{storage}'.", f"Use one of: {', '.join(STORE_FILES)}.")
        self.path = Path(cache_dir) / STORE_FILES[storage]
        self.storage = storage
        self.shape = (n, height, width)
        self._row_bytes = height * width
        self._fd: int | None = None
        self._offset = 0
        self._chunk_offsets: np.ndarray | None = None  # HDF5: the file offset of each row's chunk
        exists = self.path.exists()
        if storage == "hdf5":
            self._open_h5(resume and exists)
        elif not (resume and exists):
            with open(self.path, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": self.shape})
                fh.truncate(fh.tell() + n * self._row_bytes)
        if storage != "hdf5":
            shape, self._offset = _npy_layout(self.path)
            self._check_shape(shape)
        self._fd = os.open(self.path, os.O_RDWR)

    @staticmethod
    def existing_rows(cache_dir: str | Path, storage: str) -> int | None:
        """Rows of the store already in ``cache_dir``; None only when there is no store file.

        Raises:
            CacheError: the store exists but cannot be read (torn, foreign, an I/O error): never taken for "none".
        """
        path = Path(cache_dir) / STORE_FILES[storage]
        if not path.is_file():
            return None
        try:
            if storage == "hdf5":
                with open_h5_readonly(path) as fh:
                    return int(fh[H5_DATASET].shape[0])
            return int(_npy_layout(path)[0][0])
        except (OSError, KeyError, ValueError, CacheError) as exc:
            raise CacheError(
                f"The image store {path} of the interrupted cache cannot be read ({exc}).",
                "Start it again with --overwrite.",
            ) from exc

    def _open_h5(self, reopen: bool) -> None:
        if reopen:
            with open_h5_readonly(self.path) as fh:
                if H5_DATASET in fh:
                    self._check_shape(fh[H5_DATASET].shape)
                    self._chunk_offsets = _h5_chunk_offsets(fh[H5_DATASET], self._row_bytes, self.path)
                    return
        self._create_h5()
        with open_h5_readonly(self.path) as fh:
            self._chunk_offsets = _h5_chunk_offsets(fh[H5_DATASET], self._row_bytes, self.path)

    def _create_h5(self) -> None:
        """A new file holding the fully allocated, unwritten dataset (metadata only: the rows stay sparse)."""
        import h5py

        from cxr_tools.runtime.space import check_room

        n, height, width = self.shape
        check_room(
            self.path.parent,
            _H5_METADATA_BYTES + _H5_METADATA_BYTES_PER_ROW * n,
            "Free some space there (or choose another -o), then rerun with --resume.",
        )
        fh = h5py.File(self.path, "w")
        try:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # whole chunk index written now, never while writing rows
            fh.create_dataset(
                H5_DATASET,
                shape=self.shape,
                maxshape=(None, height, width),
                dtype="uint8",
                chunks=(1, height, width),
                fillvalue=0,
                fill_time="never",
                dcpl=dcpl,
            )
        finally:
            fh.close()

    def _check_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape) != self.shape:
            raise CacheError(
                f"Existing image store {self.path} has shape {tuple(shape)}, expected {self.shape}.",
                "The inputs or --size changed since the interrupted run; rerun with --overwrite.",
            )

    def write(self, row: int, image: np.ndarray) -> None:
        """Store one uint8 [H, W] image at ``row``."""
        self.write_block(row, np.asarray(image)[None])

    def write_block(self, start: int, images: np.ndarray) -> None:
        """Store consecutive images ``images`` [k, H, W] from ``start``."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.shape[1:] != self.shape[1:] or start < 0 or start + len(images) > self.shape[0]:
            raise CacheError(f"Cannot store images of shape {images.shape} at row {start} of {self.shape}.")
        if not len(images) or self._fd is None:
            return
        if self._chunk_offsets is None:
            _pwrite_all(self._fd, memoryview(images.reshape(-1).data), self._offset + start * self._row_bytes)
            return
        for i, image in enumerate(images):
            _pwrite_all(self._fd, memoryview(image.reshape(-1).data), int(self._chunk_offsets[start + i]))

    def flush(self, *, durable: bool = False) -> None:
        """Hand written rows to the OS (``pwrite`` already has: enough to survive ``kill -9``); ``durable`` also
        fsyncs (power loss)."""
        if self._fd is not None and durable:
            os.fsync(self._fd)

    def truncate(self, n: int) -> None:
        """Shrink the store to its first ``n`` rows (the rows kept once every input is processed)."""
        if not 0 <= n <= self.shape[0]:
            raise CacheError(f"Cannot shrink an image store of {self.shape[0]} rows to {n}.")
        if n == self.shape[0]:
            return
        if self._chunk_offsets is not None:
            import h5py

            self.flush(durable=True)
            fh = h5py.File(self.path, "r+")
            try:
                fh[H5_DATASET].resize(n, axis=0)
            finally:
                fh.close()
            self._chunk_offsets = self._chunk_offsets[:n]
        elif self._fd is not None:
            header = _npy_header(self.path)
            new = _pad_header({"descr": "|u1", "fortran_order": False, "shape": (n, *self.shape[1:])}, len(header))
            os.pwrite(self._fd, new, 0)
            os.ftruncate(self._fd, self._offset + n * self._row_bytes)
        self.shape = (n, *self.shape[1:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ImageStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What HDF5 writes when it creates a store (superblock, object headers, the chunk B-tree: measured ~130 bytes a
# row), with room to spare: checked free before creating, since HDF5 cannot survive failing to write it.
_H5_METADATA_BYTES = 256 * 1024
_H5_METADATA_BYTES_PER_ROW = 256


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """``pwrite`` all of ``data`` at ``pos`` (a write may be short, e.g. on a disk filling up)."""
    while len(data):
        written = os.pwrite(fd, data, pos)
        data, pos = data[written:], pos + written


def _h5_chunk_offsets(dataset: Any, row_bytes: int, path: Path) -> np.ndarray:
    """The file offset of each row's chunk of a store's dataset (one allocated, unfiltered chunk per row)."""
    n = int(dataset.shape[0])
    offsets = np.full(n, -1, dtype=np.int64)
    sizes_ok = [True]

    def record(info: Any) -> None:
        offsets[info.chunk_offset[0]] = info.byte_offset
        sizes_ok[0] = sizes_ok[0] and info.size == row_bytes and info.filter_mask == 0

    if hasattr(dataset.id, "chunk_iter"):  # h5py >= 3.8 on HDF5 >= 1.12.3: one pass over the chunk index
        dataset.id.chunk_iter(record)
    else:
        for row in range(n):
            record(dataset.id.get_chunk_info_by_coord((row, 0, 0)))
    if dataset.chunks != (1, *dataset.shape[1:]) or not sizes_ok[0] or (n and offsets.min() < 0):
        raise CacheError(
            f"The image store {path} is not laid out as cxr writes it (one allocated chunk per image).",
            "Start it again with --overwrite.",
        )
    return offsets


def _npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """Shape and data offset of a ``.npy`` file, read from its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        if dtype != np.uint8:
            raise CacheError(f"Image store {path} holds {dtype}, not uint8.", "Recreate the cache with --overwrite.")
        return tuple(shape), fh.tell()


def _npy_header(path: Path) -> bytes:
    _, offset = _npy_layout(path)
    with open(path, "rb") as fh:
        return fh.read(offset)


def _pad_header(header: dict[str, Any], length: int) -> bytes:
    """A version-1.0 ``.npy`` header padded with spaces to exactly ``length`` bytes (rewritten in place)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    raw = buf.getvalue()
    text = raw[10:].rstrip(b"\n ")
    pad = length - 10 - len(text) - 1
    if pad < 0:
        raise CacheError("Cannot rewrite the .npy header in place.", "Recreate the cache with --overwrite.")
    body = text + b" " * pad + b"\n"
    return raw[:8] + len(body).to_bytes(2, "little") + body


def read_tables(path: str | Path) -> tuple[dict[str, Any], Any]:
    """The manifest and the index of a complete cache, checked (schema version, index columns), without
    touching the image store: what label statistics and the reader both start from."""
    path = require_complete(path)
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path / MANIFEST} is not valid JSON.", "Recreate the cache.") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"Cache {path} has schema version {version}; this cxr-tools reads version {SCHEMA_VERSION}.",
            "Recreate the cache with this version of `cxr preprocess`.",
        )
    if not (path / INDEX).is_file():
        raise CacheError(f"Cache {path} lacks {INDEX}.", "Recreate the cache.")
    check_index_checksum(path, manifest)
    index = read_index(path / INDEX)
    missing = [c for c in (*INDEX_META_COLUMNS, *manifest.get("labels", [])) if c not in index.columns]
    if missing:
        raise CacheError(f"{path / INDEX} lacks column(s) {', '.join(missing)}.", "Recreate the cache.")
    return manifest, index


class CacheReader:
    """Random access to a complete cache; identical arrays whatever the storage kind.

    The store is opened lazily in each process, so a reader can be handed to DataLoader workers
    (h5py file handles cannot cross a fork safely).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = require_complete(path)
        self.manifest, self.index = read_tables(self.path)
        self.storage: str = self.manifest["storage"]
        self.labels: tuple[str, ...] = tuple(self.manifest["labels"])
        self._arr: Any = None
        self._h5: Any = None
        self._content: dict[str, str] | None = None
        shape = self._store().shape
        if shape[0] != len(self.index):
            raise CacheError(
                f"Cache {self.path} stores {shape[0]} images but its index lists {len(self.index)}.",
                "Recreate the cache with --overwrite.",
            )
        self.image_shape: tuple[int, int] = (int(shape[1]), int(shape[2]))

    @property
    def manifest_hash(self) -> str:
        return manifest_hash(self.manifest)

    @property
    def content(self) -> dict[str, str]:
        """:func:`content_digests` of this cache (computed once per reader). A cache written before pixel digests
        were recorded has its pixels hashed here, once per process, with a note."""
        if self._content is None:
            pixels = self.manifest.get(PIXELS_DIGEST)
            if not pixels:
                log.info(
                    "Cache %s predates recorded pixel digests: hashing its %d images now (re-preprocess it to "
                    "record the digest once).",
                    self.path,
                    len(self),
                )
                pixels = pixel_digest(self.path, self.storage)
            self._content = content_digests(self.manifest, self.index, str(pixels))
        return self._content

    @property
    def fingerprint(self) -> str:
        """The cache's content fingerprint (:func:`content_fingerprint`): what episode lists are addressed by."""
        return content_fingerprint(self.content)

    def _store(self) -> Any:
        if self._arr is None:
            store = self.path / STORE_FILES[self.storage]
            if not store.is_file():
                raise CacheError(f"Cache {self.path} lacks its image store {store.name}.", "Recreate the cache.")
            with self._damage_named():
                if self.storage == "hdf5":
                    self._h5 = open_h5_readonly(store)
                    self._arr = self._h5[H5_DATASET]
                else:
                    self._arr = np.load(store, mmap_mode="r")
        return self._arr

    @contextlib.contextmanager
    def _damage_named(self) -> Iterator[None]:
        """A store that cannot be opened or read (truncated, overwritten) is a one-line :class:`CacheError`."""
        try:
            yield
        except (OSError, ValueError, KeyError) as exc:
            store = self.path / STORE_FILES[self.storage]
            raise CacheError(
                f"The image store {store} is unreadable, damaged or truncated ({_first_line(exc)}).",
                f"Check the cache with `cxr stats {self.path} --verify`; recreate it with "
                "`cxr preprocess ... --overwrite`.",
            ) from exc

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> np.ndarray:
        """One image as uint8 [H, W] (a copy, safe to modify)."""
        store = self._store()
        with self._damage_named():
            return np.array(store[int(row)])

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Several images as uint8 [n, H, W], in the order given (repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        if rows.min() < 0 or rows.max() >= len(self):
            raise CacheError(f"Row out of range for cache {self.path} of {len(self)} images.")
        store = self._store()
        with self._damage_named():
            return self._read(store, rows)

    def _read(self, store: Any, rows: np.ndarray) -> np.ndarray:
        if self.storage != "hdf5":
            return np.asarray(store[rows])  # numpy fancy indexing copies, in the order given
        # h5py point selections are slow (~4 ms per random row); runs of consecutive rows read as slices
        # cost one chunk read per image instead.
        uniq, inverse = np.unique(rows, return_inverse=True)
        block = np.empty((len(uniq), *self.image_shape), dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(uniq)], strict=True):
            block[lo:hi] = store[int(uniq[lo]) : int(uniq[hi - 1]) + 1]  # (read_direct is ~8x slower here)
        return block[inverse]

    def raw_labels(self, labels: Sequence[str] | None = None) -> np.ndarray:
        """Raw label values float32 [N, L] (1, 0, -1, NaN) for ``labels`` (default: all)."""
        cols = list(labels) if labels is not None else list(self.labels)
        unknown = [c for c in cols if c not in self.labels]
        if unknown:
            raise CacheError(
                f"Label(s) {', '.join(unknown)} are not in cache {self.path}.",
                f"Its labels: {', '.join(self.labels)}.",
            )
        return self.index[cols].to_numpy(dtype=np.float32, na_value=np.nan)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        self._h5 = None
        self._arr = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arr"] = None
        state["_h5"] = None
        return state

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_h5_readonly(path: str | Path) -> Any:
    """An HDF5 file opened read-only without HDF5's file locking, so caches on NFS / Lustre (where those locks
    fail or hang) read fine; a cache is only read once complete, so no lock is needed. h5py >= 3.5 takes
    ``locking=False``; older ones honour ``HDF5_USE_FILE_LOCKING=FALSE`` (set when unset)."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # h5py < 3.5: no locking argument
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, "r")


def open_cache(path: str | Path) -> CacheReader:
    """Open a complete cache for reading (clear :class:`CacheError` when it is missing or incomplete)."""
    return CacheReader(path)
