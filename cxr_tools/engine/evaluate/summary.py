"""What ``cxr evaluate`` writes after its episodes: the tables, the aggregates with their intervals, the plots,
and the pieces of ``summary.json`` (its content is assembled by :func:`cxr_tools.engine.evaluate.evaluate`).

* **Aggregates**: per class, the mean over the episodes containing it; overall, the mean over episodes of the
  episode's mean over its classes; each with the interval of the variance model (:mod:`cxr_tools.eval.variance`:
  episodes, support and query patients), fitted on the design written to ``episode_patients.csv``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cxr_tools import __version__
from cxr_tools.eval.report import aggregate, evaluation_plots, generalized_summary, metrics_of, write_table
from cxr_tools.eval.variance import design_from_tables
from cxr_tools.runtime.versions import library_versions

if TYPE_CHECKING:
    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode
    from cxr_tools.eval.thresholds import ThresholdRule

EPISODES_CSV = "episodes.csv"
SCORES_CSV = "scores.csv"
PATIENTS_CSV = "episode_patients.csv"
PLOTS_DIR = "plots"


def episode_patients(cache: CacheReader, episodes: Sequence[Episode]) -> Any:
    """``episode_patients.csv``: every patient of every episode with its role (``support`` / ``query``), the
    design the variance model (:mod:`cxr_tools.eval.variance`) needs to count patients reused across episodes."""

    ids = cache.index["patient_id"].astype(str).to_numpy()
    frames = []
    for i, ep in enumerate(episodes):
        for role, rows in (("support", ep.support_rows), ("query", ep.query_rows)):
            frames.append(pd.DataFrame({"episode": i, "role": role, "patient": ids[np.asarray(rows, dtype=np.int64)]}))
    if not frames:
        return pd.DataFrame(columns=["episode", "role", "patient"])
    return pd.concat(frames, ignore_index=True)


def variance_record(design: Any) -> dict[str, Any]:
    """summary.json's ``variance``: which model made every interval, over how many episodes and patients."""
    return {
        "model": "episodes+patients (crossed random effects, REML)",
        "episodes": design.episodes,
        "patients": design.patients,
        "design": PATIENTS_CSV,
        "confidence": 0.95,
    }


def json_safe(obj: Any) -> Any:
    """NaN / inf as None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_results(
    out: Path,
    records: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    cache: CacheReader,
    classes: Sequence[str],
    episodes: Sequence[Episode],
    rule: ThresholdRule,
    title: str | None,
    seen: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[Path], dict[str, Any] | None]:
    """Write ``episodes.csv``, ``scores.csv`` (with each query's patient), ``episode_patients.csv`` and, with a
    ``title``, the plots; return ``(per_class, overall, variance record, files, generalized)``, what summary.json
    records (``generalized``: seen / unseen / harmonic, None for standard episodes; ``seen``: the seen classes)."""

    table = pd.DataFrame.from_records(records)
    score_table = pd.DataFrame.from_records(scores)
    score_table["patient"] = cache.index["patient_id"].astype(str).to_numpy()[score_table["row"].to_numpy(int)]
    patients = episode_patients(cache, episodes)
    design = design_from_tables(patients, range(len(episodes)))
    metrics = metrics_of(rule)
    per_class, overall = aggregate(table, [*classes, *seen], metrics, design)
    generalized = None
    if seen:
        generalized = generalized_summary(
            table, metrics, design, [c for c in seen if c in per_class], [c for c in classes if c in per_class]
        )
    files = [
        write_table(out / EPISODES_CSV, table),
        write_table(out / SCORES_CSV, score_table),
        write_table(out / PATIENTS_CSV, patients),
    ]
    if title is not None:
        files += evaluation_plots(out / PLOTS_DIR, score_table, per_class, overall, rule, title=title)
    return per_class, overall, variance_record(design), files, generalized


def provenance(seconds: float, device: str) -> dict[str, Any]:
    """What summary.json records about how and when it was computed."""

    return {
        "seconds": round(seconds, 3),
        "device": device,
        "tool_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "versions": library_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
