"""Patient-cluster bootstrap of few-shot metrics: an interval that knows episodes redraw the same patients.

Episodes of one evaluation reuse the few patients of the meta-test pool many times, so the Student-t interval
over episodes treats as independent what is not. Here the *patients* are the sampling unit: each replicate draws
the query patients with replacement (counts ``[B, n_patients]``), weights every query image by its patient's draw
count, recomputes every episode's metrics with those weights, and averages them like the point estimate (per
class over the episodes containing it; overall over episodes of the episode mean). The percentile 2.5–97.5% of
the ``B`` replicate means is the interval. The support sets are not resampled (that would need a new
adaptation per replicate); see docs/science.md.

Everything is vectorised over the replicates: the metrics are weighted rank statistics (a weighted
Mann-Whitney AUC, a weighted step-wise average precision, weighted confusion counts), equal to scikit-learn's
``sample_weight`` versions. A replicate in which an episode's class lost all its positives or all its negatives
says nothing about that class in that episode: its metrics are NaN there and skipped by the averages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_tools.eval.metrics import METRICS

DEFAULT_REPLICATES = 1000
_MAX_CELLS = 20_000_000  # replicates x patients per weight chunk (bounds memory on large pools)


@dataclass(frozen=True)
class BootstrapIntervals:
    """Percentile intervals ``(low, high)`` per class and metric and overall per metric."""

    replicates: int
    patients: int
    per_class: dict[str, dict[str, tuple[float, float]]]
    overall: dict[str, tuple[float, float]]


def patient_counts(n_patients: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Draw counts ``[replicates, n_patients]``: each row resamples ``n_patients`` patients with replacement."""
    draws = rng.integers(0, n_patients, size=(replicates, n_patients))
    offset = draws + (np.arange(replicates) * n_patients)[:, None]
    counts = np.bincount(offset.ravel(), minlength=replicates * n_patients)
    return counts.reshape(replicates, n_patients).astype(np.float64)


def weighted_metrics(
    targets: np.ndarray, scores: np.ndarray, weights: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """AUC, AP, F1, precision and recall of one class for every weight row ``weights [B, n]`` at once.

    Equal to scikit-learn's ``roc_auc_score`` / ``average_precision_score`` / ``precision_recall_fscore_support``
    with ``sample_weight`` (zero_division=0); NaN in a row whose weighted positives or negatives are zero.
    """
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted, w_sorted = s[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # ascending score levels (ties share one)
    pos = np.add.reduceat(np.where(y_sorted, w_sorted, 0.0), starts, axis=1)  # [B, K] weighted positives per level
    neg = np.add.reduceat(np.where(y_sorted, 0.0, w_sorted), starts, axis=1)
    p_total, n_total = pos.sum(1), neg.sum(1)
    defined = (p_total > 0) & (n_total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each level
        auc = (pos * (below + 0.5 * neg)).sum(1) / (p_total * n_total)
        tp = np.cumsum(pos[:, ::-1], axis=1)  # at each threshold (descending): weighted TP and FP with s >= t
        seen = tp + np.cumsum(neg[:, ::-1], axis=1)
        precision_at = tp / np.where(seen > 0, seen, 1.0)
        recall_at = tp / p_total[:, None]
        ap = (np.diff(recall_at, axis=1, prepend=0.0) * precision_at).sum(1)
        pred = s >= threshold
        tp_t = w[:, y & pred].sum(1)
        pp_t = w[:, pred].sum(1)
        precision = tp_t / np.where(pp_t > 0, pp_t, 1.0)
        recall = tp_t / p_total
        f1 = 2 * tp_t / np.where(p_total + pp_t > 0, p_total + pp_t, 1.0)
    out = {"auc": auc, "ap": ap, "f1": f1, "precision": precision, "recall": recall}
    return {k: np.where(defined, v, np.nan) for k, v in out.items()}


def cluster_bootstrap(
    scores: Any,
    classes: Sequence[str],
    *,
    replicates: int = DEFAULT_REPLICATES,
    rng: np.random.Generator,
    threshold: float = 0.5,
    metrics: Sequence[str] = METRICS,
) -> BootstrapIntervals:
    """Patient-cluster bootstrap intervals from a ``scores.csv`` table with a ``patient`` column (module doc)."""
    import pandas as pd

    if replicates < 1:
        raise ValueError("the bootstrap needs at least one replicate")
    codes, patients = pd.factorize(scores["patient"].astype(str))
    n_patients = len(patients)
    groups = []  # (episode, class, targets, scores, patient codes)
    frame = scores.assign(_code=codes)
    for (episode, cls), rows in frame.groupby(["episode", "class"], sort=True):
        groups.append(
            (int(episode), str(cls), rows["target"].to_numpy(int), rows["score"].to_numpy(float),
             rows["_code"].to_numpy())
        )  # fmt: skip
    episodes = sorted({g[0] for g in groups})
    ep_pos = {e: i for i, e in enumerate(episodes)}
    chunk = max(1, min(replicates, _MAX_CELLS // max(n_patients, 1)))
    class_reps: dict[str, dict[str, list[np.ndarray]]] = {c: {m: [] for m in metrics} for c in classes}
    overall_reps: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    masks = {cls: np.array([g[1] == cls for g in groups], dtype=bool) for cls in classes}
    done = 0
    while done < replicates:
        b = min(chunk, replicates - done)
        counts = patient_counts(n_patients, b, rng)
        per_group = [weighted_metrics(y, s, counts[:, code], threshold) for _, _, y, s, code in groups]
        for m in metrics:
            values = np.stack([g[m] for g in per_group]) if per_group else np.zeros((0, b))  # [G, b]
            sums = np.zeros((len(episodes), b))
            seen = np.zeros((len(episodes), b))
            for (episode, *_), v in zip(groups, values, strict=True):
                ok = ~np.isnan(v)
                sums[ep_pos[episode]] += np.where(ok, v, 0.0)
                seen[ep_pos[episode]] += ok
            with np.errstate(invalid="ignore"):
                ep_means = np.where(seen > 0, sums / np.where(seen > 0, seen, 1.0), np.nan)
            overall_reps[m].append(_nanmean(ep_means))
            for cls, mask in masks.items():
                if mask.any():
                    class_reps[cls][m].append(_nanmean(values[mask]))
        done += b
    per_class = {
        c: {m: _percentiles(np.concatenate(reps[m])) for m in metrics}
        for c, reps in class_reps.items()
        if reps[metrics[0]]
    }
    overall = {m: _percentiles(np.concatenate(overall_reps[m])) for m in metrics}
    return BootstrapIntervals(replicates, n_patients, per_class, overall)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Column means of ``values [rows, B]`` ignoring NaN (NaN where a column has none)."""
    ok = ~np.isnan(values)
    n = ok.sum(0)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.where(ok, values, 0.0).sum(0) / np.where(n > 0, n, 1), np.nan)


def _percentiles(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return (float("nan"), float("nan"))
    tail = 50 * (1 - confidence)
    low, high = np.percentile(v, [tail, 100 - tail])
    return (float(low), float(high))
