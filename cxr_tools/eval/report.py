"""From per-episode metric tables to the numbers and figures of ``cxr evaluate`` / ``cxr compare``.

One definition of every aggregate, shared by both commands so a comparison recomputed from ``episodes.csv``
equals the evaluation's ``summary.json``:

* per class: the mean over the episodes that contain the class;
* overall: the mean over episodes of the *episode mean* (the mean of the metric over the episode's classes,
  NaN-ignoring) — the unit on which two methods evaluated on the same episodes are paired;
* every interval, per class and overall, comes from the one variance model (:mod:`cxr_tools.eval.variance`):
  episodes, support and query patients; ``[low, high]`` contains the estimate;
* the threshold-free metrics (AUC, AP) come first; F1 / precision / recall are measured at the threshold rule's
  thresholds (per episode and class with ``support``; :mod:`cxr_tools.eval.thresholds`) and absent with ``none``;
* generalized episodes (a ``group`` column: ``seen`` / ``unseen``) also give, per metric, the seen and the unseen
  series (per episode, the mean over its seen, resp. unseen, classes) and their harmonic mean
  ``H = 2 S U / (S + U)`` of the two means, whose interval comes from the delta method: the per-episode series
  ``H + a (s_e - S) + b (u_e - U)`` with ``a = dH/dS = 2U^2/(S+U)^2`` and ``b = dH/dU = 2S^2/(S+U)^2`` has mean
  ``H`` and, fitted by the same variance model, the linearised variance of ``H`` (episodes, patients, seeds and
  the covariance of the seen and unseen means included). ``cxr compare`` ranks on them as ``auc-seen``,
  ``auc-unseen``, ``auc-harmonic`` (any measured metric before the dash).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.eval.metrics import METRICS, THRESHOLD_FREE
from cxr_tools.eval.variance import EpisodeDesign, estimate
from cxr_tools.runtime.fs import atomic_path

if TYPE_CHECKING:
    from cxr_tools.eval.thresholds import ThresholdRule

#: episodes.csv; ``threshold`` and the thresholded metrics are absent with ``--threshold none``.
EPISODE_COLUMNS: tuple[str, ...] = ("episode", "class", "positives", "negatives", "threshold", *METRICS)


def metrics_of(rule: ThresholdRule) -> tuple[str, ...]:
    """The metrics an evaluation under ``rule`` measures: AUC and AP, then the thresholded ones unless ``none``."""
    return METRICS if rule.thresholded else THRESHOLD_FREE


def episode_means(table: Any, metric: str) -> Any:
    """Per episode, the mean of ``metric`` over its classes (a Series indexed by episode, sorted)."""
    values = table[["episode", metric]].astype({metric: float})
    return values.groupby("episode", sort=True)[metric].mean()  # pandas' mean skips NaN


#: The parts of a generalized evaluation, each a per-episode series of every metric (module docstring).
GENERALIZED_PARTS: tuple[str, ...] = ("seen", "unseen", "harmonic")


def split_metric(name: str) -> tuple[str, str | None]:
    """``"auc-harmonic"`` -> ``("auc", "harmonic")``; a plain metric -> ``(name, None)``."""
    base, _, part = name.rpartition("-")
    if base and part in GENERALIZED_PARTS:
        return base, part
    return name, None


def is_generalized(table: Any) -> bool:
    """Whether an ``episodes.csv`` table comes from generalized episodes (seen and unseen classes)."""
    return "group" in table.columns and bool((table["group"] == "seen").any())


def metric_series(table: Any, name: str) -> Any:
    """Per episode (a Series indexed by episode, sorted): the episode mean of a metric, or of its seen / unseen
    classes, or the delta-method series of their harmonic mean (``auc-seen``, ``auc-unseen``, ``auc-harmonic``;
    module docstring). NaN where an episode has no finite value."""
    import pandas as pd

    metric, part = split_metric(name)
    if part is None:
        return episode_means(table, metric)
    episodes = np.sort(table["episode"].unique())
    seen = episode_means(table[table["group"] == "seen"], metric).reindex(episodes)
    unseen = episode_means(table[table["group"] == "unseen"], metric).reindex(episodes)
    if part == "seen":
        return seen
    if part == "unseen":
        return unseen
    s, u = seen.to_numpy(dtype=float), unseen.to_numpy(dtype=float)
    both = np.isfinite(s) & np.isfinite(u)
    out = np.full(len(episodes), np.nan)
    if both.any():
        big_s, big_u = float(s[both].mean()), float(u[both].mean())
        total = big_s + big_u
        if total > 0:
            h = 2 * big_s * big_u / total
            a, b = 2 * big_u**2 / total**2, 2 * big_s**2 / total**2
            out[both] = h + a * (s[both] - big_s) + b * (u[both] - big_u)
        else:
            out[both] = 0.0
    return pd.Series(out, index=episodes, name=name)


def generalized_summary(
    table: Any, metrics: Sequence[str], design: EpisodeDesign, seen: Sequence[str], unseen: Sequence[str]
) -> dict[str, Any]:
    """summary.json's ``generalized``: the seen and unseen classes and, per part (seen, unseen, harmonic) and
    metric, the estimate with the variance model's interval."""
    out: dict[str, Any] = {
        "seen_classes": list(seen),
        "unseen_classes": list(unseen),
        "method": "harmonic mean of the seen and unseen means; interval by the delta method (docs/science.md)",
    }
    for part in GENERALIZED_PARTS:
        out[part] = {}
        for m in metrics:
            series = metric_series(table, f"{m}-{part}")
            at = series.index.to_numpy(dtype=np.int64)
            out[part][m] = estimate(series.to_numpy()[None], design, at, seeded=False).record()
    return out


def aggregate(
    table: Any, classes: Sequence[str], metrics: Sequence[str], design: EpisodeDesign
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """``(per_class, overall)`` from an ``episodes.csv`` table (module docstring); classes never drawn are left out.

    ``design``: the episodes' patients (episode ``i`` of the table is row ``i`` of the design).
    """
    per_class: dict[str, dict[str, dict[str, Any]]] = {}
    for cls in classes:
        rows = table[table["class"] == cls]
        if len(rows):
            at = rows["episode"].to_numpy(dtype=np.int64)
            per_class[cls] = {
                m: estimate(rows[m].to_numpy(dtype=float)[None], design, at, seeded=False).record() for m in metrics
            }
    overall = {}
    for m in metrics:
        means = episode_means(table, m)
        at = means.index.to_numpy(dtype=np.int64)
        overall[m] = estimate(means.to_numpy()[None], design, at, seeded=False).record()
    return per_class, overall


def write_table(path: str | Path, table: Any) -> Path:
    """Write a DataFrame as CSV atomically (no index column)."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return path


def _by_class(scores: Any, classes: Sequence[str] | None) -> list[tuple[str, Any]]:
    groups = {str(c): rows for c, rows in scores.groupby("class", sort=False)}
    order = [c for c in classes if c in groups] if classes is not None else list(groups)
    return [(c, groups[c]) for c in order]


def pooled_curves(scores: Any, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Per class (in ``classes`` order), the ROC curve ``(fpr, tpr, auc)`` of its query scores pooled over episodes."""
    from sklearn.metrics import roc_auc_score, roc_curve

    out: dict[str, Any] = {}
    for cls, rows in _by_class(scores, classes):
        y = rows["target"].to_numpy(dtype=int)
        s = rows["score"].to_numpy(dtype=float)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s)
            out[str(cls)] = (fpr, tpr, float(roc_auc_score(y, s)))
    return out


def pooled_confusion(scores: Any, threshold: float, classes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per class, the 2×2 confusion matrix ``[[TN, FP], [FN, TP]]`` of pooled queries, each at its episode's
    ``threshold`` column when the table has one, else at ``threshold``."""
    out: dict[str, np.ndarray] = {}
    for cls, rows in _by_class(scores, classes):
        y = rows["target"].to_numpy(dtype=int) == 1
        cut = rows["threshold"].to_numpy(dtype=float) if "threshold" in rows else threshold
        p = rows["score"].to_numpy(dtype=float) >= cut
        out[str(cls)] = np.array([[(~y & ~p).sum(), (~y & p).sum()], [(y & ~p).sum(), (y & p).sum()]], dtype=np.int64)
    return out


def evaluation_plots(
    plot_dir: str | Path,
    scores: Any,
    per_class: Mapping[str, Mapping[str, Mapping[str, Any]]],
    overall: Mapping[str, Mapping[str, Any]],
    rule: ThresholdRule,
    *,
    title: str = "",
) -> list[Path]:
    """The figures of one evaluation: ROC per class, per-class AUC bars, confusion matrices (unless the rule is
    ``none``), overall metrics (thresholded ones labelled with the rule)."""
    from cxr_tools.eval.plots import plot_confusion_matrices, plot_metric_bars, plot_roc_curves

    plot_dir = Path(plot_dir)
    prefix = f"{title}: " if title else ""
    classes = list(per_class)
    files = [
        plot_roc_curves(
            plot_dir / "roc.png",
            pooled_curves(scores, classes),
            title=f"{prefix}ROC per class, queries pooled over episodes (tables: per-episode mean)",
        ),
        plot_metric_bars(
            plot_dir / "auc_per_class.png",
            classes,
            [_num(per_class[c]["auc"]["mean"]) for c in classes],
            [_num(per_class[c]["auc"]["ci95"]) for c in classes],
            metric="AUC",
            title=f"{prefix}AUC per class over episodes",
        ),
    ]
    if rule.thresholded:
        at = "support-chosen thresholds" if rule.kind == "support" else f"threshold {rule.label}"
        files.append(
            plot_confusion_matrices(
                plot_dir / "confusion.png",
                pooled_confusion(scores, rule.value if rule.value is not None else 0.5, classes),
                threshold=rule.value if rule.value is not None else math.nan,
                title=f"{prefix}confusion matrices at {at} (queries pooled)",
            )
        )
    files.append(
        plot_metric_bars(
            plot_dir / "overall.png",
            [rule.header(m.upper() if m in ("auc", "ap", "f1") else m) for m in overall],
            [_num(overall[m]["mean"]) for m in overall],
            [_num(overall[m]["ci95"]) for m in overall],
            metric="value",
            chance=None,
            title=f"{prefix}overall metrics (mean over episodes, 95% interval)",
        )
    )
    return files


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
