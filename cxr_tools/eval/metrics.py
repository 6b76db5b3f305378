"""Few-shot evaluation metrics: pure functions over targets and scores (no torch, no files).

Per episode and class: ROC AUC (threshold-free, the primary metric), average precision, and F1 / precision /
recall at a stated threshold; over episodes: mean ± 95% confidence interval (Student t), paired differences
between methods evaluated on the *same* episodes, and Holm-Bonferroni adjustment of a family of p-values
(docs/science.md). The patient-cluster bootstrap lives in :mod:`cxr_tools.eval.bootstrap`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRICS: tuple[str, ...] = ("auc", "ap", "f1", "precision", "recall")
#: The threshold-free metrics, shown first everywhere (the thresholded ones depend on the threshold rule).
THRESHOLD_FREE: tuple[str, ...] = ("auc", "ap")


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% confidence half-width over ``n`` episodes."""

    mean: float
    ci95: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.ci95:.3f}"


def class_metrics(targets: np.ndarray, scores: np.ndarray, threshold: float | None = 0.5) -> dict[str, float]:
    """AUC, AP, F1, precision and recall of one class (targets in {0,1}, scores = probabilities).

    AUC and AP are NaN when the targets hold a single class (they are undefined there, not 0.5). With
    ``threshold`` None (``--threshold none``) only the threshold-free AUC and AP are returned.
    """
    import sklearn
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(targets).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    both = 0 < y.sum() < len(y)
    # Parameter validation (of the literal arguments below) was a quarter of the time; data checks still run.
    with sklearn.config_context(skip_parameter_validation=True):
        out = {
            "auc": float(roc_auc_score(y, s)) if both else math.nan,
            "ap": float(average_precision_score(y, s)) if both else math.nan,
        }
        if threshold is None:
            return out
        pred = (s >= threshold).astype(int)
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    return {**out, "f1": float(f), "precision": float(p), "recall": float(r)}


def episode_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    threshold: float | Sequence[float] | np.ndarray | None = 0.5,
) -> dict[str, dict[str, float]]:
    """:func:`class_metrics` for each column of an episode's query targets [Q, N] and scores [Q, N], at one
    threshold for every class, one per class (e.g. chosen on the support set), or None (AUC and AP only)."""
    targets = np.asarray(targets)
    scores = np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2 or targets.shape[1] != len(classes):
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must be [Q, {len(classes)}]")
    if threshold is None:
        per: list[float | None] = [None] * len(classes)
    else:
        per = [float(t) for t in np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(classes),))]
    return {c: class_metrics(targets[:, j], scores[:, j], per[j]) for j, c in enumerate(classes)}


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence half-width of ``values``, ignoring NaNs."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(v[0]), math.nan, 1)
    sem = v.std(ddof=1) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sem)
    return Estimate(float(v.mean()), half, n)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the same episodes: mean ± CI, the paired p-value and, when the t-test cannot be used, why."""

    mean: float
    ci95: float
    n: int
    p_value: float
    note: str = ""


IDENTICAL_NOTE = "identical on every episode"
CONSTANT_NOTE = "the same difference on every episode (exact sign test)"


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> PairedDifference:
    """Compare two methods episode by episode (the arrays must be aligned on the same episodes).

    The paired t-test needs a spread of differences: identical scores give p = 1 (and a note); a constant
    non-zero difference gives the exact two-sided sign-test p = 2^(1-n) — never a p of 0.
    """
    from scipy import stats

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("paired differences need the same episodes on both sides")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    est = mean_ci(d)
    note = ""
    if len(d) < 2:
        p = math.nan
    elif np.allclose(d, 0.0, rtol=0.0, atol=1e-12):
        p, note = 1.0, IDENTICAL_NOTE
    elif np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        p, note = max(2.0 ** (1 - len(d)), np.finfo(float).tiny), CONSTANT_NOTE
    else:
        p = float(stats.ttest_rel(x[keep], y[keep]).pvalue)
    return PairedDifference(est.mean, est.ci95, est.n, p, note)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and is not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def format_p(p: float | None) -> str:
    """``p = 0.042``, ``p < 0.001`` or ``p n/a`` — never ``p = 0.0``."""
    if p is None or not math.isfinite(p):
        return "p n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.9995 else "p = 1"
