"""Class-balanced sampling within a split: balance, determinism, resume, rows of the split only; pos_weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cache_factory import make_cache

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.labels import apply_uncertainty
from cxr_tools.data.sampling.balance import BalancedSampler, class_weights
from cxr_tools.data.sampling.batches import LabelledBatches, make_batch_loader, plan_batches
from cxr_tools.data.sampling.selection import split_rows
from cxr_tools.errors import DataError
from cxr_tools.runtime.distributed import SINGLE


def _imbalanced(n: int = 1000) -> np.ndarray:
    y = np.zeros((n, 3), dtype=np.float32)
    y[:300, 0] = 1  # common
    y[300:330, 1] = 1  # rare
    y[330:335, 2] = 1  # very rare
    return y  # 665 all-negative rows


def test_groups_are_drawn_about_equally():
    y = _imbalanced()
    sampler = BalancedSampler(y, num_samples=20000, seed=0)
    draws = np.fromiter(sampler, dtype=np.int64)
    per_class = y[draws].sum(axis=0) / len(draws)
    negatives = (y[draws].sum(axis=1) == 0).mean()
    np.testing.assert_allclose([*per_class, negatives], 0.25, atol=0.02)
    # natural frequencies were 0.30 / 0.03 / 0.005 / 0.665: the rare classes really were boosted
    assert len(np.unique(draws[y[draws, 2] == 1])) == 5


def test_same_seed_same_order_and_epochs_differ():
    y = _imbalanced(200)
    a = list(BalancedSampler(y, seed=7))
    assert a == list(BalancedSampler(y, seed=7))
    assert a != list(BalancedSampler(y, seed=8))
    s = BalancedSampler(y, seed=7)
    first, second = list(s), list(s)  # the epoch advances after a full pass
    assert first == a and second != first and s.epoch == 2
    s.set_epoch(1)
    assert list(s) == second


def test_resume_mid_epoch_continues_with_the_remaining_draws():
    y = _imbalanced(200)
    full = list(BalancedSampler(y, num_samples=50, seed=3, epoch=4))
    s = BalancedSampler(y, num_samples=50, seed=3, epoch=4)
    it = iter(s)
    head = [next(it) for _ in range(20)]
    state = s.state_dict()
    assert state == {"seed": 3, "epoch": 4, "position": 20, "num_samples": 50}
    resumed = BalancedSampler(y, num_samples=50, seed=3)
    resumed.load_state_dict(state)
    assert len(resumed) == 30
    assert head + list(resumed) == full
    with pytest.raises(DataError, match="seed"):
        BalancedSampler(y, num_samples=50, seed=4).load_state_dict(state)


def test_masked_rows_are_neither_positives_nor_negatives():
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.float32)
    mask = np.array([[False, True], [True, False], [True, True], [True, True]])
    s = BalancedSampler(y, num_samples=300, seed=0, mask=mask)
    draws = set(s)
    assert draws == {2, 3}  # row 0's positive is masked, row 1 has an unknown entry: never drawn
    assert s.empty_classes == (0,)
    with pytest.raises(DataError, match="Nothing to sample"):
        BalancedSampler(np.zeros((2, 1)), negatives=False)


def test_sampler_over_a_split_only_returns_that_split(tmp_path):
    n = 60
    splits = ["train"] * 30 + ["val"] * 10 + ["test"] * 20
    path = make_cache(tmp_path, n, ("A", "B"), splits=splits, patients=[f"p{i}" for i in range(n)], size=16)
    cache = open_cache(path)
    rows = split_rows(cache, "test", None)
    targets, mask = apply_uncertainty(cache.raw_labels()[rows], "ignore")
    ds = LabelledBatches(cache, rows, targets, mask, None, 0)
    sampler = BalancedSampler(targets, num_samples=64, seed=1, mask=mask)
    positions = sampler.indices(0)
    assert max(positions) < len(ds)
    assert set(cache.index["split"].to_numpy()[ds.rows[positions]]) == {"test"}
    plan = plan_batches(positions, 16, SINGLE)
    loader = make_batch_loader(ds, [(0, p) for p in plan], 0, torch.device("cpu"))
    assert sum(len(b[0]) for b in loader) == 64


def test_class_weights_are_negatives_over_positives():
    y = _imbalanced()
    w = class_weights(y)
    np.testing.assert_allclose(w, [700 / 300, 970 / 30, 995 / 5], rtol=1e-6)
    assert class_weights(y, max_weight=50.0)[2] == 50.0
    mask = np.ones_like(y, dtype=bool)
    mask[:100, 0] = False  # 100 positives ignored
    assert class_weights(y, mask)[0] == pytest.approx(700 / 200)
    assert class_weights(np.zeros((4, 1)))[0] == 1.0
