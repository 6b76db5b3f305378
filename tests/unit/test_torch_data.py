"""CacheDataset: uncertainty policies, normalisation ranges, plausible augmentation, determinism, workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from cache_factory import make_cache

from cxr_tools.data.cache import open_cache
from cxr_tools.data.torch_data import Augment, CacheDataset, make_loader, normalize_image
from cxr_tools.errors import ConfigError, DataError

torch.set_num_threads(1)


def _top_bright(n: int, size: int = 32) -> np.ndarray:
    imgs = np.full((n, size, size), 30, dtype=np.uint8)
    imgs[:, : size // 3] = 220  # bright top third, like the neck/shoulders band being brighter
    return imgs


@pytest.fixture
def cache(tmp_path):
    values = np.array([[1, 0], [-1, 1], [np.nan, -1], [0, 0], [1, 1], [0, np.nan]], dtype=np.float32)
    splits = ["train", "train", "val", "val", "test", "test"]
    return make_cache(tmp_path, 6, ("A", "B"), values=values, splits=splits, patients=list("aabbcc"))


@pytest.mark.parametrize(
    ("policy", "targets", "mask"),
    [
        ("ignore", [[1, 0], [0, 1]], [[True, True], [False, True]]),
        ("zeros", [[1, 0], [0, 1]], [[True, True], [True, True]]),
        ("ones", [[1, 0], [1, 1]], [[True, True], [True, True]]),
    ],
)
def test_uncertainty_policies_through_the_dataset(cache, policy, targets, mask):
    ds = CacheDataset(cache, rows="train", policy=policy)
    assert len(ds) == 2
    got_t = torch.stack([ds[i][1] for i in range(2)])
    got_m = torch.stack([ds[i][2] for i in range(2)])
    assert got_t.dtype == torch.float32 and got_m.dtype == torch.bool
    assert got_t.tolist() == targets and got_m.tolist() == mask
    val = CacheDataset(cache, rows="val", policy=policy)
    assert val[0][1][0].item() == 0.0  # "not mentioned" is a negative under every policy


def test_items_and_normalisation_ranges(tmp_path):
    imgs = np.zeros((3, 32, 32), dtype=np.uint8)
    imgs[1] = 255
    imgs[2, :, :16] = 255
    path = make_cache(tmp_path, 3, ("A",), images=imgs)
    unit = CacheDataset(path, normalize="unit")
    x, t, m = unit[2]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and t.shape == (1,) and m.shape == (1,)
    assert unit[0][0].min().item() == 0.0 and unit[1][0].max().item() == 1.0
    xrv = CacheDataset(path, normalize="xrv")
    assert xrv[0][0].min().item() == -1024.0 and xrv[1][0].max().item() == 1024.0
    assert xrv[2][0].mean().item() == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="normalisation"):
        CacheDataset(path, normalize="imagenet")
    np.testing.assert_allclose(normalize_image(np.array([0, 255], np.uint8), "xrv"), [-1024, 1024])


def test_rows_selection_and_errors(cache):
    reader = open_cache(cache)
    assert CacheDataset(reader, rows="test").rows.tolist() == [4, 5]
    assert CacheDataset(reader, rows=[5, 0]).rows.tolist() == [5, 0]
    assert len(CacheDataset(reader)) == 6
    assert CacheDataset(reader, labels=["B"]).targets.shape == (6, 1)
    with pytest.raises(DataError, match="no images in split 'holdout'"):
        CacheDataset(reader, rows="holdout")
    with pytest.raises(DataError, match="within"):
        CacheDataset(reader, rows=[6])
    with pytest.raises(DataError, match="not in cache"):
        CacheDataset(reader, labels=["C"])
    with pytest.raises(IndexError):
        CacheDataset(reader)[6]


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_never_flips_vertically_or_turns(tmp_path, seed):
    path = make_cache(tmp_path, 4, ("A",), images=_top_bright(4))
    aug = Augment(rotate_deg=15, translate=0.2, scale=0.3, brightness=0.3, contrast=0.3, hflip=True)
    ds = CacheDataset(path, augment=aug, seed=seed)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x = ds[i][0][0].numpy()
            bright = x > (x.max() + x.min()) / 2
            rows, cols = np.nonzero(bright)
            # the bright band stays on top (no vertical flip) and spans the width (no 90° turn)
            assert rows.mean() < 0.45 * x.shape[0], (epoch, i)
            assert abs(cols.mean() - (x.shape[1] - 1) / 2) < 0.25 * x.shape[1], (epoch, i)
            assert cols.max() - cols.min() > 0.5 * x.shape[1], (epoch, i)


def test_augmentation_changes_images_deterministically(tmp_path):
    path = make_cache(tmp_path, 4, ("A",))
    a = CacheDataset(path, augment=Augment(), seed=3)
    b = CacheDataset(path, augment=Augment(), seed=3)
    plain = CacheDataset(path)
    assert torch.equal(a[1][0], b[1][0])  # same seed, epoch, item -> same image
    assert not torch.equal(a[1][0], plain[1][0])
    first = a[1][0].clone()
    a.set_epoch(1)
    assert not torch.equal(a[1][0], first)  # a new epoch draws new augmentations
    assert not torch.equal(CacheDataset(path, augment=Augment(), seed=4)[1][0], first)
    assert float(a[1][0].min()) >= 0.0 and float(a[1][0].max()) <= 1.0


def test_horizontal_flip_is_off_by_default_and_on_when_asked(tmp_path):
    imgs = np.full((1, 32, 32), 20, dtype=np.uint8)
    imgs[:, :, :10] = 240  # bright left side
    path = make_cache(tmp_path, 1, ("A",), images=imgs)
    still = Augment(rotate_deg=0, translate=0, scale=0, brightness=0, contrast=0)
    assert not still.hflip
    ds = CacheDataset(path, augment=still)
    for epoch in range(5):
        ds.set_epoch(epoch)
        assert ds[0][0][0, :, :10].mean() > 0.8  # the bright side stays left
    flips = []
    flip_ds = CacheDataset(path, augment=Augment(0, 0, 0, 0, 0, hflip=True))
    for epoch in range(20):
        flip_ds.set_epoch(epoch)
        flips.append(bool(flip_ds[0][0][0, :, -10:].mean() > 0.8))
    assert 3 < sum(flips) < 17


def test_augment_limits_are_enforced():
    with pytest.raises(ConfigError, match="rotate_deg"):
        Augment(rotate_deg=90)
    with pytest.raises(ConfigError, match="translate"):
        Augment(translate=-0.1)


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_picklable_and_identical_batches_with_workers(tmp_path, storage):
    path = make_cache(tmp_path, 8, ("A", "B"), storage=storage)
    ds = CacheDataset(path, augment=Augment(), seed=5)
    ds[0]  # open the store in this process before forking / pickling
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3][0], ds[3][0])
    serial = [b[0] for b in make_loader(ds, 4, workers=0, seed=1, shuffle=True)]
    parallel = [b[0] for b in make_loader(ds, 4, workers=2, seed=1, shuffle=True)]
    assert len(serial) == 2 and all(torch.equal(s, p) for s, p in zip(serial, parallel, strict=True))
    ds.set_epoch(1)  # reaches the workers: they are forked anew for every epoch
    serial1 = [b[0] for b in make_loader(ds, 4, workers=0, seed=1, shuffle=True)]
    parallel1 = [b[0] for b in make_loader(ds, 4, workers=1, seed=1, shuffle=True)]
    assert all(torch.equal(s, p) for s, p in zip(serial1, parallel1, strict=True))
    assert not torch.equal(serial1[0], serial[0])
    batch = next(iter(make_loader(ds, 4)))
    assert batch[0].shape == (4, 1, 32, 32) and batch[1].shape == (4, 2) and batch[2].dtype == torch.bool
