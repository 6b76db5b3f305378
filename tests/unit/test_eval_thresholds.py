"""The threshold rule of F1 / precision / recall: chosen on the support set only, parsed strictly, one definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_tools.errors import ConfigError
from cxr_tools.eval.metrics import episode_metrics
from cxr_tools.eval.thresholds import (
    ThresholdRule,
    choose_threshold,
    choose_thresholds,
    episode_thresholds,
    parse_rule,
)


def test_perfectly_ranked_scores_below_one_half_get_f1_one_at_support_and_zero_at_one_half():
    # support and query of one class: every positive above every negative, all scores < 0.5
    support_y = np.array([[1], [1], [0], [0], [0], [0]], dtype=float)
    support_s = np.array([[0.30], [0.25], [0.20], [0.10], [0.05], [0.02]])
    query_y = np.array([[1], [0], [1], [0], [0]], dtype=float)
    query_s = np.array([[0.28], [0.12], [0.40], [0.01], [0.18]])
    cut = episode_thresholds(parse_rule("support"), support_y, support_s)
    assert cut[0] == pytest.approx((0.25 + 0.20) / 2)  # midpoint between the adjacent support scores
    at_support = episode_metrics(query_y, query_s, ["c"], cut)["c"]
    at_half = episode_metrics(query_y, query_s, ["c"], 0.5)["c"]
    assert at_support["f1"] == at_support["precision"] == at_support["recall"] == 1.0
    assert at_half["f1"] == at_half["recall"] == 0.0
    assert at_support["auc"] == at_half["auc"] == 1.0


def test_query_labels_never_influence_the_threshold():
    rng = np.random.default_rng(0)
    support_y = (rng.random((12, 3)) < 0.4).astype(float)
    support_y[0] = 1  # every class has a positive
    support_s = rng.random((12, 3))
    rule = parse_rule("support")
    cuts = episode_thresholds(rule, support_y, support_s)
    query_s = rng.random((20, 3))
    for flip in range(3):  # any query labels: the thresholds are a function of the support set alone
        query_y = (rng.random((20, 3)) < 0.3 + 0.2 * flip).astype(float)
        assert np.array_equal(episode_thresholds(rule, support_y, support_s), cuts)
        metrics = episode_metrics(query_y, query_s, ["a", "b", "c"], cuts)
        assert set(metrics["a"]) == {"auc", "ap", "f1", "precision", "recall"}


def test_ties_take_the_lowest_threshold_reaching_the_best_f1_and_unknown_targets_are_ignored():
    # cuts at 0.9 (P=1, R=1/2, F1=2/3) and at 0.1 (P=2/4, R=1, F1=2/3): tie -> the lower, most sensitive cut
    assert choose_threshold([1, 0, 0, 1], [0.9, 0.5, 0.4, 0.1]) == pytest.approx(0.1)
    assert choose_threshold([1, math.nan, 0], [0.8, 0.99, 0.2]) == pytest.approx(0.5)
    assert choose_threshold([1, 1], [0.3, 0.6]) == pytest.approx(0.3)  # all positive: the lowest score
    assert math.isnan(choose_threshold([0, 0], [0.3, 0.6]))  # no positive: nothing to choose
    assert choose_thresholds(np.array([[1, 0], [0, 1]]), np.array([[0.7, 0.1], [0.2, 0.6]])) == pytest.approx(
        [0.45, 0.35]
    )


@pytest.mark.parametrize(
    ("text", "kind", "label"),
    [("support", "support", "support"), ("NONE", "none", "none"), ("0.3", "fixed", "0.3"), (0.5, "fixed", "0.5")],
)
def test_rules_parse_and_name_their_headers(text, kind, label):
    rule = parse_rule(text)
    assert (rule.kind, rule.label) == (kind, label)
    assert rule.header("AUC") == "AUC"
    assert rule.header("F1") == (f"F1@{label}" if kind != "none" else "F1")


@pytest.mark.parametrize("text", ["foo", "1.5", "-0.1", "nan", ""])
def test_bad_rules_name_the_accepted_forms(text):
    with pytest.raises(ConfigError, match="support") as info:
        parse_rule(text)
    assert "none" in info.value.hint


def test_fixed_and_none_rules_give_constant_or_no_thresholds():
    y, s = np.ones((3, 2)), np.zeros((3, 2))
    assert list(episode_thresholds(ThresholdRule("fixed", 0.3), y, s)) == [0.3, 0.3]
    assert np.isnan(episode_thresholds(parse_rule("none"), y, s)).all()
    assert set(episode_metrics(y, s, ["a", "b"], None)["a"]) == {"auc", "ap"}


def test_the_chosen_threshold_reaches_the_best_f1_of_scikit_learns_precision_recall_curve():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(1)
    for n in (3, 10, 40):
        for _ in range(30):
            y = (rng.random(n) < 0.4).astype(float)
            y[0] = 1
            s = np.round(rng.random(n), 1)  # ties included
            p, r, _ = precision_recall_curve(y > 0.5, s)
            best = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0))
            pred = s >= choose_threshold(y, s)
            f1 = 2 * (pred & (y > 0.5)).sum() / (pred.sum() + y.sum())
            assert f1 == pytest.approx(best, abs=1e-12)
