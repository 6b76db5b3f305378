"""The patient-cluster bootstrap: weighted metrics equal scikit-learn's, and duplicated patients widen the CI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from cxr_tools.eval.bootstrap import cluster_bootstrap, patient_counts, weighted_metrics
from cxr_tools.eval.report import aggregate


def test_weighted_metrics_equal_sklearn_sample_weight():
    rng = np.random.default_rng(3)
    y = rng.random(40) < 0.4
    s = np.round(rng.random(40), 1)  # many ties
    w = rng.integers(0, 4, size=(25, 40)).astype(float)
    out = weighted_metrics(y, s, w, threshold=0.5)
    for b in range(len(w)):
        if w[b, y].sum() == 0 or w[b, ~y].sum() == 0:
            assert np.isnan(out["auc"][b])
            continue
        assert out["auc"][b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]))
        assert out["ap"][b] == pytest.approx(average_precision_score(y, s, sample_weight=w[b]))
        p, r, f, _ = precision_recall_fscore_support(y, s >= 0.5, sample_weight=w[b], average="binary", zero_division=0)
        assert (out["precision"][b], out["recall"][b], out["f1"][b]) == pytest.approx((p, r, f))


def test_patient_counts_resample_all_patients():
    counts = patient_counts(7, 50, np.random.default_rng(0))
    assert counts.shape == (50, 7) and (counts.sum(1) == 7).all()


def _scores(patients_of, n_episodes=40, q=6, seed=0, first_lowest=True):
    """Episodes of one class: q positives and q negatives, the patient of each query given by ``patients_of``."""
    rng = np.random.default_rng(seed)
    rows, records = [], []
    for e in range(n_episodes):
        y = np.r_[np.ones(q), np.zeros(q)].astype(int)
        pats = patients_of(e, rng, q)
        s = rng.random(2 * q) + 0.5 * y
        if first_lowest:
            s[0] = 0.0  # the first positive always scores lowest
        rows += [{"episode": e, "class": "D", "row": 0, "target": t, "score": v, "patient": p}
                 for t, v, p in zip(y, s, pats, strict=True)]  # fmt: skip
        records.append({"episode": e, "class": "D", "auc": roc_auc_score(y, s)})
    return pd.DataFrame(rows), pd.DataFrame(records)


def test_duplicated_patient_makes_the_cluster_interval_wider_than_the_episode_interval():
    def one_star(e, rng, q):  # patient "star" is the first positive of every episode (many films); others fresh
        return np.array(["star"] + [f"p{e}_{i}" for i in range(1, 2 * q)])

    scores, table = _scores(one_star)
    boot = cluster_bootstrap(scores, ["D"], replicates=1000, rng=np.random.default_rng(1), metrics=("auc",))
    per_class, overall = aggregate(table, ["D"], metrics=("auc",), bootstrap=boot)
    auc = overall["auc"]
    assert auc["bootstrap_high"] - auc["bootstrap_low"] > 1.5 * 2 * auc["episode_ci95"]
    assert auc["interval"] == "bootstrap" and auc["low"] == auc["bootstrap_low"]
    assert auc["low"] <= auc["mean"] <= auc["high"] and auc["ci95"] >= auc["mean"] - auc["low"]
    assert per_class["D"]["auc"]["interval"] == "bootstrap"


def test_independent_patients_give_a_cluster_interval_close_to_the_episode_interval():
    def fresh(e, rng, q):
        return np.array([f"p{e}_{i}" for i in range(2 * q)])

    scores, table = _scores(fresh, first_lowest=False)
    boot = cluster_bootstrap(scores, ["D"], replicates=1000, rng=np.random.default_rng(1), metrics=("auc",))
    _, overall = aggregate(table, ["D"], metrics=("auc",), bootstrap=boot)
    width = overall["auc"]["bootstrap_high"] - overall["auc"]["bootstrap_low"]
    assert 0.7 < width / (2 * overall["auc"]["episode_ci95"]) < 1.6
    again = cluster_bootstrap(scores, ["D"], replicates=1000, rng=np.random.default_rng(1), metrics=("auc",))
    assert again.overall == boot.overall  # seeded


def test_batches_of_episodes_equal_one_at_a_time():
    from cxr_tools.eval.bootstrap import _batch_metrics

    rng = np.random.default_rng(5)
    y = rng.random((3, 12)) < 0.5
    s = np.round(rng.random((3, 12)), 1)
    w = rng.integers(0, 3, size=(3, 8, 12)).astype(float)
    batch = _batch_metrics(y, s, w, 0.5)
    for g in range(3):
        one = weighted_metrics(y[g], s[g], w[g])
        for m, v in one.items():
            np.testing.assert_allclose(batch[m][g], v, equal_nan=True)
