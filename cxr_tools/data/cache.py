"""The preprocessed image cache: manifest, index, image store, and one reader for both storage kinds.

Layout (DESIGN.md §3, schema version :data:`SCHEMA_VERSION`)::

    CACHE/manifest.json   written last and atomically; a cache without it is incomplete
    CACHE/index.csv       one row per stored image, in storage order
    CACHE/images.h5       dataset "images", uint8 [N, H, W], chunks (1, H, W)        (storage "hdf5")
    CACHE/images.npy      uint8 [N, H, W], opened with mmap_mode="r"                 (storage "memmap")
    CACHE/rejected.csv    inputs that could not be read, with the reason

Why decode once: the seed projects decoded 1024² PNGs every epoch (~6 ms each); a cached 224² read is
~10–20 µs. Labels are stored raw (1, 0, -1, empty) and the uncertainty policy is applied at load time
(:func:`cxr_tools.data.labels.apply_uncertainty`), so one cache serves every policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.errors import CacheError
from cxr_tools.runtime.fs import atomic_write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.csv"
REJECTED = "rejected.csv"
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
# Read these as strings so ids like "00000001" keep their zeros.
_STRING_COLUMNS = ("image_id", "source_path", "patient_id", "study", "view", "sex", "split")


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a finished cache (its manifest exists)."""
    return (Path(path) / MANIFEST).is_file()


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically; call this last, it marks the cache complete."""
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    return atomic_write_json(Path(path) / MANIFEST, data)


def manifest_hash(manifest: dict[str, Any]) -> str:
    """A short, stable hash of a manifest (recorded by models trained on the cache)."""
    text = json.dumps(manifest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_index(path: str | Path) -> Any:
    """Read ``index.csv`` with id columns as strings and labels as floats (NaN = not mentioned)."""
    import pandas as pd

    dtypes = dict.fromkeys(_STRING_COLUMNS, "string")
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=True)
    for col in _STRING_COLUMNS:
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    return df


class ImageStoreWriter:
    """Writes images into a pre-sized store by row; reopening with ``resume=True`` keeps what is there."""

    def __init__(self, cache_dir: str | Path, storage: str, n: int, height: int, width: int, *, resume: bool = False):
        if storage not in STORE_FILES:
            raise CacheError(f"Unknown cache format '{storage}'.", f"Use one of: {', '.join(STORE_FILES)}.")
        self.path = Path(cache_dir) / STORE_FILES[storage]
        self.storage = storage
        self.shape = (n, height, width)
        exists = self.path.exists()
        if storage == "hdf5":
            import h5py

            self._h5 = h5py.File(self.path, "r+" if (resume and exists) else "w")
            if H5_DATASET in self._h5:
                self._arr = self._h5[H5_DATASET]
                self._check_shape(self._arr.shape)
            else:
                self._arr = self._h5.create_dataset(
                    H5_DATASET, shape=self.shape, dtype="uint8", chunks=(1, height, width), fillvalue=0
                )
        else:
            self._h5 = None
            if resume and exists:
                self._arr = np.load(self.path, mmap_mode="r+")
                self._check_shape(self._arr.shape)
            else:
                self._arr = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.uint8, shape=self.shape)

    def _check_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape) != self.shape:
            raise CacheError(
                f"Existing image store {self.path} has shape {tuple(shape)}, expected {self.shape}.",
                "The inputs or --size changed since the interrupted run; rerun with --overwrite.",
            )

    def write(self, row: int, image: np.ndarray) -> None:
        """Store one uint8 [H, W] image at ``row``."""
        self._arr[row] = image

    def write_block(self, start: int, images: np.ndarray) -> None:
        """Store consecutive images ``images`` [k, H, W] from ``start``."""
        self._arr[start : start + len(images)] = images

    def flush(self) -> None:
        """Push written rows to disk (call before recording them as done)."""
        if self._h5 is not None:
            self._h5.flush()
        else:
            self._arr.flush()

    def close(self) -> None:
        self.flush()
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        self._arr = None

    def __enter__(self) -> ImageStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CacheReader:
    """Random access to a complete cache; identical arrays whatever the storage kind.

    The store is opened lazily in each process, so a reader can be handed to DataLoader workers
    (h5py file handles cannot cross a fork safely).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CacheError(f"Cache {self.path} does not exist.", "Create it with `cxr preprocess SRC -o CACHE`.")
        if not is_complete(self.path):
            raise CacheError(
                f"Cache {self.path} is incomplete (no {MANIFEST}).",
                "Finish it with `cxr preprocess ... --resume`, or recreate it with --overwrite.",
            )
        with open(self.path / MANIFEST, encoding="utf-8") as fh:
            self.manifest: dict[str, Any] = json.load(fh)
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CacheError(
                f"Cache {self.path} has schema version {version}; this cxr-tools reads version {SCHEMA_VERSION}.",
                "Recreate the cache with this version of `cxr preprocess`.",
            )
        self.storage: str = self.manifest["storage"]
        self.labels: tuple[str, ...] = tuple(self.manifest["labels"])
        self.index = read_index(self.path / INDEX)
        missing = [c for c in (*INDEX_META_COLUMNS, *self.labels) if c not in self.index.columns]
        if missing:
            raise CacheError(f"{self.path / INDEX} lacks column(s) {', '.join(missing)}.", "Recreate the cache.")
        self._arr: Any = None
        self._h5: Any = None
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

    def _store(self) -> Any:
        if self._arr is None:
            store = self.path / STORE_FILES[self.storage]
            if not store.is_file():
                raise CacheError(f"Cache {self.path} lacks its image store {store.name}.", "Recreate the cache.")
            if self.storage == "hdf5":
                import h5py

                self._h5 = h5py.File(store, "r")
                self._arr = self._h5[H5_DATASET]
            else:
                self._arr = np.load(store, mmap_mode="r")
        return self._arr

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> np.ndarray:
        """One image as uint8 [H, W] (a copy, safe to modify)."""
        return np.array(self._store()[int(row)])

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Several images as uint8 [n, H, W], in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint8)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        uniq, inverse = np.unique(sorted_rows, return_inverse=True)
        block = np.asarray(self._store()[uniq])  # h5py needs increasing unique indices
        out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        out[order] = block[inverse]
        return out

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


def open_cache(path: str | Path) -> CacheReader:
    """Open a complete cache for reading (clear :class:`CacheError` when it is missing or incomplete)."""
    return CacheReader(path)
