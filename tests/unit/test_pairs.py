"""Pair sampler: balanced, seeded, never one patient twice, frontal only, rules as documented, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from cache_factory import chexpert_sample_index, make_index, nih_sample_index

from cxr_tools.data.labels import CHEXPERT_LABELS, NIH_LABELS
from cxr_tools.data.sampling.pairs import PairSampler, frontal_rows
from cxr_tools.errors import DataError


def _sets(index, labels, rows):
    raw = index.set_index("row").loc[rows, list(labels)].to_numpy(dtype=np.float32, na_value=np.nan)
    return raw == 1


def _check(index, labels, pairs, rule):
    pid = index.set_index("row")["patient_id"]
    assert (pid.loc[pairs.left].to_numpy() != pid.loc[pairs.right].to_numpy()).all()
    a, b = _sets(index, labels, pairs.left), _sets(index, labels, pairs.right)
    same = (a == b).all(axis=1)
    shares = (a & b).any(axis=1) | (~a.any(axis=1) & ~b.any(axis=1))  # "no finding" counts as one
    expected = same if rule == "same-set" else shares
    assert (pairs.target == expected).all()


@pytest.mark.parametrize("rule", ["same-set", "shares-finding"])
def test_nih_pairs_are_balanced_patient_disjoint_and_follow_the_rule(rule):
    index = nih_sample_index()
    sampler = PairSampler(index, NIH_LABELS, rule=rule)
    pairs = sampler.sample(301, np.random.default_rng(0))
    assert len(pairs) == 301 and pairs.target.sum() == 150
    _check(index, NIH_LABELS, pairs, rule)
    assert len(pairs.rows()) > 50  # anchors spread over the images, not one pair repeated


def test_same_generator_state_same_pairs_other_seed_other_pairs():
    sampler = PairSampler(nih_sample_index(), NIH_LABELS)
    a = sampler.sample(64, np.random.default_rng(7))
    b = sampler.sample(64, np.random.default_rng(7))
    c = sampler.sample(64, np.random.default_rng(8))
    assert a.digest() == b.digest() and (a.left == b.left).all() and (a.target == b.target).all()
    assert a.digest() != c.digest()


def test_frontal_views_only_and_uncertain_images_left_out():
    index = chexpert_sample_index()
    labels = CHEXPERT_LABELS
    sampler = PairSampler(index, labels, rule="shares-finding")
    pairs = sampler.sample(200, np.random.default_rng(1))
    views = index.set_index("row")["view"]
    used = pairs.rows()
    assert set(views.loc[used]) <= {"PA", "AP", ""} and "Lateral" in set(views)
    raw = index.set_index("row").loc[used, list(labels)].to_numpy(dtype=np.float32, na_value=np.nan)
    assert not (raw == -1).any() and sampler.uncertain_dropped > 0
    _check(index, labels, pairs, "shares-finding")
    assert frontal_rows(index).sum() < len(index)


def test_rows_restrict_the_pool():
    index = nih_sample_index()
    rows = np.arange(0, len(index), 2)
    pairs = PairSampler(index, NIH_LABELS, rows=rows).sample(100, np.random.default_rng(2))
    assert np.isin(pairs.rows(), rows).all()


def test_a_patient_with_many_images_never_pairs_with_itself():
    # one big patient holds most "A" images; positives for "A" must come from the two other patients
    values = np.array([[1, 0]] * 10 + [[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]], dtype=np.float32)
    patients = ["big"] * 10 + ["p1", "p2", "p3", "p4", "p5", "p6"]
    index = make_index(16, ("A", "B"), values=values, patients=patients, views=["PA"] * 16)
    pairs = PairSampler(index, ("A", "B")).sample(400, np.random.default_rng(0))
    _check(index, ("A", "B"), pairs, "same-set")
    pid = index.set_index("row")["patient_id"]
    assert (pid.loc[pairs.left[pairs.target == 1]].to_numpy() != "big").any()


def test_rule_without_positives_fails_clearly():
    # every label set belongs to a single patient: no positive pair exists under same-set
    values = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    index = make_index(6, ("A", "B"), values=values, patients=["a", "a", "b", "b", "c", "d"], views=["PA"] * 6)
    with pytest.raises(DataError, match=r"no positive pair.*shares-finding"):
        PairSampler(index, ("A", "B"), rule="same-set")
    pairs = PairSampler(index, ("A", "B"), rule="shares-finding").sample(20, np.random.default_rng(0))
    _check(index, ("A", "B"), pairs, "shares-finding")


def test_bad_inputs_fail_clearly():
    index = make_index(6, ("A",), views=["Lateral"] * 6)
    with pytest.raises(DataError, match="usable image"):
        PairSampler(index, ("A",))
    with pytest.raises(DataError, match="pair rule"):
        PairSampler(make_index(6, ("A",)), ("A",), rule="similar")
    with pytest.raises(DataError, match="one patient"):
        PairSampler(make_index(6, ("A",), patients=["x"] * 6), ("A",))
