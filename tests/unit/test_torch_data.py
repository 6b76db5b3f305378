"""The trainers' batch loader (data/sampling/batches.py): what `cxr train` and `cxr train-siamese` read, batch by batch.

Images in [0, 1] with the plausible augmentation keyed by (seed, epoch, position), identical in worker processes,
every global batch split over ranks, labels and masks aligned with their rows.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from cache_factory import make_cache

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.labels import apply_uncertainty
from cxr_tools.data.sampling.batches import (
    Augment,
    CacheImages,
    LabelledBatches,
    PairBatches,
    batch_count,
    make_batch_loader,
    plan_batches,
)
from cxr_tools.errors import ConfigError
from cxr_tools.runtime.distributed import DistInfo

torch.set_num_threads(1)
CPU = torch.device("cpu")


def _top_bright(n: int, size: int = 32) -> np.ndarray:
    imgs = np.full((n, size, size), 30, dtype=np.uint8)
    imgs[:, : size // 3] = 220  # bright top third, like the neck/shoulders band being brighter
    return imgs


def _labelled(path, augment=None, seed=0, policy="ignore"):
    cache = open_cache(path)
    rows = np.arange(len(cache))
    targets, mask = apply_uncertainty(cache.raw_labels()[rows], policy)
    return LabelledBatches(cache, rows, targets, mask, augment, seed)


def test_labelled_batches_align_images_targets_and_masks(tmp_path):
    imgs = np.zeros((4, 32, 32), dtype=np.uint8)
    imgs[1] = 255
    imgs[3, :, :16] = 255
    values = np.array([[1, 0], [-1, 1], [np.nan, -1], [0, 1]], dtype=np.float32)
    path = make_cache(tmp_path, 4, ("A", "B"), values=values, images=imgs)
    x, t, m = _labelled(path)[(0, np.array([3, 1, 0]))]
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert x[2].max().item() == 0.0 and x[1].min().item() == 1.0 and x[0].mean().item() == pytest.approx(0.5)
    assert t.tolist() == [[0, 1], [0, 1], [1, 0]]
    assert m.tolist() == [[True, True], [False, True], [True, True]]  # uncertain A of row 1 is masked out
    _, t_ones, m_ones = _labelled(path, policy="ones")[(0, np.array([1]))]
    assert t_ones.tolist() == [[1, 1]] and m_ones.all()


def test_plan_batches_split_every_global_batch_over_ranks():
    order = np.arange(10)[::-1]
    single = plan_batches(order, 4, DistInfo(rank=0, world_size=1, local_rank=0))
    assert [b.tolist() for b in single] == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]  # 2 left: one more batch
    assert batch_count(10, 4, 1) == 3 and batch_count(10, 4, 2) == 2 and batch_count(9, 4, 1) == 2
    ranks = [plan_batches(order, 4, DistInfo(rank=r, world_size=2, local_rank=r)) for r in range(2)]
    assert [len(r) for r in ranks] == [2, 2]  # the last 2 images give one image per rank: dropped
    merged = sorted(ranks[0][0].tolist() + ranks[1][0].tolist())
    assert merged == sorted(single[0].tolist())  # two ranks see the same global batch as one process


@pytest.mark.parametrize("seed", range(4))
def test_augmentation_never_flips_vertically_or_turns(tmp_path, seed):
    path = make_cache(tmp_path, 4, ("A",), images=_top_bright(4))
    aug = Augment(rotate_deg=15, translate=0.2, scale=0.3, brightness=0.3, contrast=0.3, hflip=True)
    images = CacheImages(open_cache(path), aug, seed)
    for epoch in range(3):
        batch = images.load(np.arange(4), epoch, np.arange(4)[:, None])
        for x in batch[:, 0]:
            bright = x > (x.max() + x.min()) / 2
            rows, cols = np.nonzero(bright)
            # the bright band stays on top (no vertical flip) and spans the width (no 90° turn)
            assert rows.mean() < 0.45 * x.shape[0], epoch
            assert abs(cols.mean() - (x.shape[1] - 1) / 2) < 0.25 * x.shape[1], epoch
            assert cols.max() - cols.min() > 0.5 * x.shape[1], epoch


def test_augmentation_depends_only_on_seed_epoch_and_key(tmp_path):
    path = make_cache(tmp_path, 4, ("A",))
    a, b = (CacheImages(open_cache(path), Augment(), 3) for _ in range(2))
    keys = np.arange(4)[:, None]
    first = a.load(np.arange(4), 0, keys)
    np.testing.assert_array_equal(first, b.load(np.arange(4), 0, keys))
    np.testing.assert_array_equal(first[2:], a.load(np.arange(2, 4), 0, keys[2:]))  # batch-mates do not matter
    assert not np.array_equal(first, a.load(np.arange(4), 1, keys))  # a new epoch draws new augmentations
    assert not np.array_equal(first, CacheImages(open_cache(path), Augment(), 4).load(np.arange(4), 0, keys))
    plain = a.load(np.arange(4), 0, None)  # no keys (validation): only scaled to [0, 1]
    np.testing.assert_array_equal(plain[:, 0], open_cache(path).read(np.arange(4)) * np.float32(1 / 255.0))
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_horizontal_flip_is_off_by_default_and_on_when_asked(tmp_path):
    imgs = np.full((1, 32, 32), 20, dtype=np.uint8)
    imgs[:, :, :10] = 240  # bright left side
    path = make_cache(tmp_path, 1, ("A",), images=imgs)
    still = Augment(rotate_deg=0, translate=0, scale=0, brightness=0, contrast=0)
    assert not still.hflip
    keep = CacheImages(open_cache(path), still, 0)
    assert all(keep.load(np.array([0]), e, np.array([[0]]))[0, 0, :, :10].mean() > 0.8 for e in range(5))
    flip = CacheImages(open_cache(path), Augment(0, 0, 0, 0, 0, hflip=True), 0)
    flips = [bool(flip.load(np.array([0]), e, np.array([[0]]))[0, 0, :, -10:].mean() > 0.8) for e in range(20)]
    assert 3 < sum(flips) < 17


def test_augment_limits_are_enforced():
    with pytest.raises(ConfigError, match="rotate_deg"):
        Augment(rotate_deg=90)
    with pytest.raises(ConfigError, match="translate"):
        Augment(translate=-0.1)


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_picklable_and_identical_batches_with_workers(tmp_path, storage):
    path = make_cache(tmp_path, 8, ("A", "B"), storage=storage)
    data = _labelled(path, Augment(), seed=5)
    keys = [(e, p) for e in range(2) for p in plan_batches(np.arange(8)[::-1], 4, DistInfo(0, 1, 0))]
    data[keys[0]]  # open the store in this process before forking / pickling
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone[keys[1]][0], data[keys[1]][0])
    serial = [b[0] for b in make_batch_loader(data, keys, 0, CPU)]
    parallel = [b[0] for b in make_batch_loader(data, keys, 2, CPU)]
    assert len(serial) == 4 and all(torch.equal(s, p) for s, p in zip(serial, parallel, strict=True))
    assert not torch.equal(serial[0], serial[2])  # epoch 1 augments the same rows differently


class _Pairs:
    def __init__(self, left, right, target):
        self.left, self.right, self.target = left, right, target

    def take(self, positions):
        return _Pairs(self.left[positions], self.right[positions], self.target[positions])


def test_pair_batches_read_both_sides_with_their_own_augmentation(tmp_path):
    path = make_cache(tmp_path, 6, ("A",))
    images = CacheImages(open_cache(path), Augment(), 1)
    drawn = []

    def pairs_fn(epoch):
        drawn.append(epoch)
        return _Pairs(np.array([0, 1, 2]), np.array([0, 4, 5]), np.array([1, 0, 1], dtype=np.float32))

    data = PairBatches(images, pairs_fn)
    xa, xb, y = data[(0, np.array([0, 2]))]
    assert xa.shape == xb.shape == (2, 1, 32, 32) and y.tolist() == [1.0, 1.0]
    assert not torch.equal(xa[0], xb[0])  # the same image on both sides gets two augmentations
    data[(0, np.array([1]))]
    data[(1, np.array([1]))]
    assert drawn == [0, 1]  # the epoch's pairs are drawn once per epoch
