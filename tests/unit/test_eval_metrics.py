"""Metrics are the numbers users publish: check them against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_tools.eval.metrics import (
    IDENTICAL_NOTE,
    class_metrics,
    episode_metrics,
    format_p,
    holm,
    mean_ci,
    paired_difference,
)


def test_class_metrics_by_hand():
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.4, 0.6, 0.1])
    m = class_metrics(y, s, threshold=0.5)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered right
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)


def test_single_class_targets_give_nan_auc_not_half():
    m = class_metrics(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(m["auc"]) and math.isnan(m["ap"])


def test_episode_metrics_per_column_and_shape_check():
    t = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    s = t * 0.8 + 0.1
    out = episode_metrics(t, s, ["A", "B"])
    assert out["A"]["auc"] == 1.0 and out["B"]["auc"] == 1.0
    with pytest.raises(ValueError):
        episode_metrics(t, s[:, :1], ["A", "B"])


def test_mean_ci_matches_t_interval():
    v = [0.6, 0.7, 0.8, 0.9, float("nan")]
    est = mean_ci(v)
    assert est.n == 4 and est.mean == pytest.approx(0.75)
    # t(0.975, 3) = 3.1824; sd = 0.1291; sem = 0.06455
    assert est.ci95 == pytest.approx(3.1824 * 0.129099 / 2, rel=1e-3)
    assert str(est) == "0.750 ± 0.205"


def test_paired_difference_detects_consistent_gain():
    rng = np.random.default_rng(0)
    base = rng.random(50)
    better = base + 0.05 + rng.normal(0, 0.01, 50)
    diff = paired_difference(better, base)
    assert diff.mean == pytest.approx(0.05, abs=0.01)
    assert diff.p_value < 1e-6 and diff.ci95 < 0.01
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_paired_difference_never_gives_p_zero():
    same = paired_difference([0.6, 0.7, 0.8], [0.6, 0.7, 0.8])
    assert same.p_value == 1.0 and same.note == IDENTICAL_NOTE and same.mean == 0.0
    shifted = paired_difference(np.full(10, 0.7), np.full(10, 0.6))
    assert shifted.p_value == pytest.approx(2.0**-9) and "sign test" in shifted.note
    assert paired_difference(np.arange(600) + 1.0, np.arange(600.0)).p_value > 0.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, float("nan"), 0.4])  # NaN is kept and not counted in the family
    assert out[0] == pytest.approx(0.8) and math.isnan(out[1]) and out[2] == pytest.approx(0.8)
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_format_p_never_prints_zero():
    assert format_p(0.0) == "p < 0.001" and format_p(1e-300) == "p < 0.001"
    assert format_p(0.0421) == "p = 0.042" and format_p(1.0) == "p = 1" and format_p(float("nan")) == "p n/a"
