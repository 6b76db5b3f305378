"""Caches on shared file systems: HDF5 is read without HDF5's file locks, and an unreadable store is
reported, never taken for "no store"."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from cxr_tools.data.caches.format import H5_DATASET, ImageStoreWriter, open_h5_readonly
from cxr_tools.errors import CacheError


def test_a_store_held_open_for_writing_elsewhere_still_reads(tmp_path):
    store = tmp_path / "images.h5"
    with h5py.File(store, "w") as fh:
        fh[H5_DATASET] = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
    holder = subprocess.Popen(  # another process (another node, on NFS) holds HDF5's lock on the file
        [sys.executable, "-c", f"import h5py, time; f = h5py.File({str(store)!r}, 'a'); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match="lock"):  # what a locking reader meets
            h5py.File(store, "r", locking=True)
        with open_h5_readonly(store) as fh:
            assert fh[H5_DATASET].shape == (3, 4, 4) and int(fh[H5_DATASET][2, 3, 3]) == 47
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_existing_rows_none_only_without_a_store(tmp_path, storage):
    assert ImageStoreWriter.existing_rows(tmp_path, storage) is None
    name = "images.h5" if storage == "hdf5" else "images.npy"
    (tmp_path / name).write_bytes(b"torn: not a store")
    with pytest.raises(CacheError, match=r"cannot be read.*--overwrite"):
        ImageStoreWriter.existing_rows(tmp_path, storage)
