"""The cache's image store and reader: both storage kinds give identical arrays; incomplete caches refuse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_tools.data.caches.format import (
    INDEX,
    INDEX_META_COLUMNS,
    ImageStoreWriter,
    is_complete,
    open_cache,
    write_manifest,
)
from cxr_tools.data.labels import apply_uncertainty
from cxr_tools.errors import CacheError


def _make_cache(path, storage, images, labels=("A", "B")):
    path.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with ImageStoreWriter(path, storage, n, h, w) as store:
        for i, img in enumerate(images):
            store.write(i, img)
    rows = []
    for i in range(n):
        rows.append(
            {
                "row": i,
                "image_id": f"{i:08d}_000.png",
                "source_path": f"/x/{i}.png",
                "patient_id": f"{i:08d}",
                "study": "",
                "view": "PA",
                "sex": "M",
                "age": 40,
                "split": "train",
                "A": 1.0,
                "B": -1.0 if i else None,
            }
        )
    pd.DataFrame(rows, columns=[*INDEX_META_COLUMNS, *labels]).to_csv(path / INDEX, index=False)
    write_manifest(path, {"storage": storage, "labels": list(labels)})
    return path


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_roundtrip_identical(tmp_path, storage):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 12, 12), dtype=np.uint8)
    cache = open_cache(_make_cache(tmp_path / storage, storage, images))
    assert len(cache) == 5 and cache.image_shape == (12, 12)
    np.testing.assert_array_equal(cache[3], images[3])
    np.testing.assert_array_equal(cache.read([4, 0, 4, 2]), images[[4, 0, 4, 2]])
    assert cache.index["image_id"][0] == "00000000_000.png"  # zeros kept
    raw = cache.raw_labels()
    assert raw[1, 1] == -1 and np.isnan(raw[0, 1])


def test_incomplete_cache_refused(tmp_path):
    (tmp_path / "c").mkdir()
    with ImageStoreWriter(tmp_path / "c", "hdf5", 2, 4, 4) as store:
        store.write(0, np.ones((4, 4), np.uint8))
    assert not is_complete(tmp_path / "c")
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(tmp_path / "c")


def test_resume_keeps_rows_and_checks_shape(tmp_path):
    with ImageStoreWriter(tmp_path, "memmap", 3, 4, 4) as store:
        store.write(0, np.full((4, 4), 7, np.uint8))
    with ImageStoreWriter(tmp_path, "memmap", 3, 4, 4, resume=True) as store:
        store.write(1, np.full((4, 4), 9, np.uint8))
    arr = np.load(tmp_path / "images.npy")
    assert arr[0, 0, 0] == 7 and arr[1, 0, 0] == 9
    with pytest.raises(CacheError, match="shape"):
        ImageStoreWriter(tmp_path, "memmap", 4, 4, 4, resume=True)


@pytest.mark.parametrize(
    ("policy", "target", "masked"), [("ignore", 0.0, True), ("zeros", 0.0, False), ("ones", 1.0, False)]
)
def test_uncertainty_policies(policy, target, masked):
    targets, mask = apply_uncertainty([[1.0, -1.0, np.nan, 0.0]], policy)
    assert targets[0].tolist() == [1.0, target, 0.0, 0.0]
    assert mask[0].tolist() == [True, not masked, True, True]


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_read_any_order_runs_and_range_check(tmp_path, storage):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    cache = open_cache(_make_cache(tmp_path / storage, storage, images))
    rows = [5, 6, 7, 19, 0, 6, 1, 2, 3, 18]  # runs, repeats and gaps
    np.testing.assert_array_equal(cache.read(rows), images[rows])
    np.testing.assert_array_equal(cache.read(np.array([[1, 2], [3, 4]])), images[[1, 2, 3, 4]])
    with pytest.raises(CacheError, match="out of range"):
        cache.read([20])


def test_truncate_keeps_the_first_rows(tmp_path):
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    for storage in ("hdf5", "memmap"):
        d = tmp_path / storage
        d.mkdir()
        with ImageStoreWriter(d, storage, 5, 4, 4) as store:
            store.write_block(0, images)
            store.truncate(3)
        with ImageStoreWriter(d, storage, 3, 4, 4, resume=True) as store:
            assert store.shape == (3, 4, 4)
        if storage == "memmap":
            arr = np.load(d / "images.npy")
        else:
            import h5py

            with h5py.File(d / "images.h5", "r") as fh:
                arr = fh["images"][:]
        np.testing.assert_array_equal(arr, images[:3])


def test_a_raw_dataset_folder_is_named_as_not_a_cache(tmp_path):
    (tmp_path / "nih" / "images").mkdir(parents=True)
    (tmp_path / "nih" / "Data_Entry_2017_v2020.csv").write_text("Image Index\n")
    with pytest.raises(CacheError, match="is not a cxr cache") as info:
        open_cache(tmp_path / "nih")
    assert f"cxr preprocess {tmp_path / 'nih'} -o CACHE" in str(info.value)
