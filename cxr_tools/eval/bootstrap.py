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
_BATCH_CELLS = 100_000  # replicates x images per vectorised batch of episodes (fits the CPU caches)


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
    y = np.asarray(targets).astype(bool).reshape(1, -1)
    s = np.asarray(scores, dtype=np.float64).reshape(1, -1)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))[None]
    return {k: v[0] for k, v in _batch_metrics(y, s, w, threshold).items()}


def _batch_metrics(y: np.ndarray, s: np.ndarray, w: np.ndarray, threshold: Any) -> dict[str, np.ndarray]:
    """:func:`weighted_metrics` of ``G`` classes-in-episodes of one size: ``y, s [G, n]``, ``w [G, B, n]``.

    Sorted by score, each image's tie level spans ``[start, end]``; with cumulative weights padded by a leading 0,
    the weighted negatives below a level and within it, and the weighted images at or above it, are gathers.
    AUC = Σ pos·(neg below + ½ neg tied) / (P·N); AP = Σ pos·precision(at its level) / P.
    """
    order = np.argsort(s, axis=1, kind="stable")
    s = np.take_along_axis(s, order, 1)
    y = np.take_along_axis(y, order, 1)
    w = np.take_along_axis(w, order[:, None, :], 2)
    n = s.shape[1]
    idx = np.broadcast_to(np.arange(n), s.shape)
    new_level = np.concatenate([np.ones((len(s), 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
    start = np.maximum.accumulate(np.where(new_level, idx, 0), axis=1)
    last = np.concatenate([s[:, 1:] != s[:, :-1], np.ones((len(s), 1), bool)], axis=1)
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
    pos = w * y[:, None, :]
    neg = w - pos
    zero = np.zeros((*w.shape[:2], 1))
    cum_neg = np.concatenate([zero, np.cumsum(neg, axis=2)], axis=2)
    cum_all = np.concatenate([zero, np.cumsum(w, axis=2)], axis=2)
    cum_pos = cum_all - cum_neg
    p_total, n_total = cum_pos[..., -1], cum_neg[..., -1]
    at_start = start[:, None, :]
    below = np.take_along_axis(cum_neg, at_start, 2)
    tied = np.take_along_axis(cum_neg, end[:, None, :] + 1, 2) - below
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * tied)).sum(2) / (p_total * n_total)
        tp_ge = p_total[..., None] - np.take_along_axis(cum_pos, at_start, 2)
        all_ge = cum_all[..., -1:] - np.take_along_axis(cum_all, at_start, 2)
        ap = (pos * (tp_ge / np.where(all_ge > 0, all_ge, 1.0))).sum(2) / p_total
        pred = (s >= threshold)[:, None, :]
        tp = (pos * pred).sum(2)
        pp = (w * pred).sum(2)
        precision = tp / np.where(pp > 0, pp, 1.0)
        recall = tp / p_total
        f1 = 2 * tp / np.where(p_total + pp > 0, p_total + pp, 1.0)
    defined = (p_total > 0) & (n_total > 0)
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
    """Patient-cluster bootstrap intervals from a ``scores.csv`` table with a ``patient`` column (module doc);
    a ``threshold`` column (per episode and class) overrides ``threshold``."""
    import pandas as pd

    if replicates < 1:
        raise ValueError("the bootstrap needs at least one replicate")
    codes, patients = pd.factorize(scores["patient"].astype(str))
    n_patients = len(patients)
    keys, ys, ss, cs, ts = [], [], [], [], []  # one group per (episode, class), sorted by episode
    frame = scores.assign(_code=codes)
    for (episode, cls), rows in frame.groupby(["episode", "class"], sort=True):
        keys.append((int(episode), str(cls)))
        ts.append(float(rows["threshold"].iloc[0]) if "threshold" in rows else threshold)  # per episode and class
        ys.append(rows["target"].to_numpy(int))
        ss.append(rows["score"].to_numpy(float))
        cs.append(rows["_code"].to_numpy())
    by_size: dict[int, list[int]] = {}
    for g, y in enumerate(ys):
        by_size.setdefault(len(y), []).append(g)
    episode_of = np.array([k[0] for k in keys])
    ep_starts = np.flatnonzero(np.r_[True, episode_of[1:] != episode_of[:-1]]) if keys else np.zeros(0, int)
    masks = {cls: np.array([k[1] == cls for k in keys], dtype=bool) for cls in classes}
    chunk = max(1, min(replicates, _MAX_CELLS // max(n_patients, 1)))
    class_reps: dict[str, dict[str, list[np.ndarray]]] = {c: {m: [] for m in metrics} for c in classes}
    overall_reps: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    done = 0
    while done < replicates:
        b = min(chunk, replicates - done)
        counts = patient_counts(n_patients, b, rng)
        values = {m: np.full((len(keys), b), np.nan) for m in metrics}
        for size, members in by_size.items():
            step = max(1, _BATCH_CELLS // max(b * size, 1))
            for first in range(0, len(members), step):
                sel = members[first : first + step]
                code = np.stack([cs[g] for g in sel])  # [G, n]
                w = counts[:, code].transpose(1, 0, 2)  # [G, b, n]
                out = _batch_metrics(np.stack([ys[g] for g in sel]).astype(bool), np.stack([ss[g] for g in sel]), w,
                                     np.array([ts[g] for g in sel])[:, None])  # fmt: skip
                for m in metrics:
                    values[m][sel] = out[m]
        for m in metrics:
            v = values[m]
            ok = ~np.isnan(v)
            if len(keys):
                sums = np.add.reduceat(np.where(ok, v, 0.0), ep_starts, axis=0)
                seen = np.add.reduceat(ok.astype(float), ep_starts, axis=0)
                with np.errstate(invalid="ignore"):
                    ep_means = np.where(seen > 0, sums / np.where(seen > 0, seen, 1.0), np.nan)
            else:
                ep_means = np.zeros((0, b))
            overall_reps[m].append(_nanmean(ep_means))
            for cls, mask in masks.items():
                if mask.any():
                    class_reps[cls][m].append(_nanmean(v[mask]))
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
