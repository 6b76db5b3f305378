"""Engine of ``cxr compare RUN_OR_EVAL_DIR...``: rank evaluated methods on the *same* episodes, honestly.

Each input is an evaluation directory (``summary.json`` + ``episodes.csv`` from ``cxr evaluate``) or a run whose
``eval/`` holds one. Refused, with what to do: evaluations made with episode lists older than
:data:`MIN_EPISODE_LIST_VERSION` (not patient-disjoint; re-evaluate), evaluations on different caches (naming
the preprocessing that differs), on different episode lists (naming each hash), and, for F1 / precision /
recall, made under different threshold rules (``support``, a number; docs/science.md, "Thresholds").

**Metrics shown.** The threshold-free AUC and AP first; F1 / precision / recall only when every evaluation used
the same threshold rule (``threshold``, e.g. ``support``), named in their headers (``F1@support``); evaluations
made under different rules are never pooled into one paired test of a thresholded metric.

**Seeds.** Evaluations of runs whose training configs (``RUN/config.yaml``) are identical except for the seed
and bookkeeping (output, resume, device, threads, workers, checkpoint/log cadence), evaluated with identical
settings, form one *group* (or ``--group NAME=RUN,RUN``): its per-episode scores are the mean over the seeds,
and its interval adds the between-seed variance (:func:`~cxr_tools.eval.comparison.seed_group_estimate`). A
single evaluation keeps the wider of its episode-t and patient-bootstrap intervals.

**Tests.** Paired differences on (seed-averaged) episode scores for all pairs, or all against ``--reference``;
Holm-adjusted as one family for the overall metric and one family per class; a difference is significant when
its adjusted p < 0.05. Every output shows a summary's ``leak`` and the adaptation budget. Written to
``OUT/comparison.{csv,md,png,json}`` when an output directory is given (:mod:`cxr_tools.eval.compare_output`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tools.errors import ConfigError, DataError
from cxr_tools.eval.compare_inputs import (
    MIN_EPISODE_LIST_VERSION,
    Entry,
    check_same_cache,
    check_same_episodes,
    check_versions,
    find_evaluation,
    load_evaluation,
    make_entries,
    parse_group,
    shared_rule,
)
from cxr_tools.eval.compare_output import all_positive, verdict, write_comparison
from cxr_tools.eval.metrics import METRICS, THRESHOLD_FREE

__all__ = ["MIN_EPISODE_LIST_VERSION", "CompareConfig", "CompareResult", "CompareRow", "compare", "find_evaluation"]


@dataclass(frozen=True)
class CompareConfig:
    """Options of ``cxr compare``.

    Attributes:
        inputs: evaluation directories, or run directories with an ``eval/`` evaluation.
        output: directory for comparison.{csv,md,png,json} (None = print only).
        metric: the ranking metric (auc, ap, f1, precision, recall).
        overwrite: replace an existing comparison in ``output``.
        groups: explicit seed groups ``NAME=PATH,PATH,...`` (paths as for ``inputs``; added to them).
        auto_group: group evaluations that differ only in the training seed.
        reference: test every method against this one (a name or a path) instead of all pairs.
    """

    inputs: tuple[Path, ...]
    output: Path | None = None
    metric: str = "auc"
    overwrite: bool = False
    groups: tuple[str, ...] = ()
    auto_group: bool = True
    reference: str | None = None


@dataclass(frozen=True)
class CompareRow:
    """One method (an evaluation or a seed group) in the ranking; ``diff_*`` compare it with the reference
    (``self - reference``; the best when there is none), ``p_value`` Holm-adjusted."""

    rank: int
    name: str
    method: str
    kind: str | None
    eval_dir: Path
    eval_dirs: tuple[Path, ...]
    seeds: tuple[Any, ...]
    mean: float
    ci95: float
    low: float
    high: float
    interval: str
    n_episodes: int
    diff: float | None
    diff_ci95: float | None
    p_value: float | None
    p_raw: float | None
    significant: bool | None
    note: str
    leak: str | None
    budget: str
    others: dict[str, float]
    per_class: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CompareResult:
    """The ranking (best first), every paired test, the verdict line, and the files written."""

    metric: str
    episode_list_hash: str
    episodes: int
    classes: tuple[str, ...]
    rows: tuple[CompareRow, ...]
    tests: tuple[Any, ...]
    reference: str
    verdict: str
    output: Path | None
    files: tuple[Path, ...] = field(default_factory=tuple)
    threshold: str | None = None
    all_positive: dict[str, float] | None = None


def compare(config: CompareConfig) -> CompareResult:
    """Rank the evaluations of ``config.inputs`` (and ``config.groups``); see the module docstring."""
    if config.metric not in METRICS:
        raise ConfigError(f"Unknown metric '{config.metric}'.", f"Use one of: {', '.join(METRICS)}.")
    explicit = [parse_group(g) for g in config.groups]
    if not config.inputs and not explicit:
        raise ConfigError("Nothing to compare.", "Pass one or more evaluated runs or evaluation directories.")
    dirs = [find_evaluation(Path(p)) for p in config.inputs]
    resolved = [d.resolve() for d in dirs]
    dup = sorted({str(d) for d, r in zip(dirs, resolved, strict=True) if resolved.count(r) > 1})
    if dup:
        raise ConfigError(f"The same evaluation is given twice: {', '.join(dup)}.", "Pass each evaluation once.")
    for _, members in explicit:  # a group member may also be listed as an input: count it once
        for member in members:
            d = find_evaluation(member)
            if d.resolve() not in [x.resolve() for x in dirs]:
                dirs.append(d)
    loaded = {d.resolve(): (d, *load_evaluation(d)) for d in dirs}
    summaries = [s for _, s, _ in loaded.values()]
    check_versions(dirs, summaries)
    check_same_cache(dirs, summaries)
    check_same_episodes(dirs, summaries, config.metric)
    entries = make_entries(loaded, explicit, config.auto_group)
    return _rank(entries, summaries[0], config, shared_rule(summaries))


# --- ranking and tests ------------------------------------------------------------------------------------------


def _matrix(entry: Entry, metric: str, cls: str | None, episodes: Any) -> Any:
    """Scores ``[seeds, episodes]`` of ``metric`` (episode means, or ``cls``'s rows; NaN where absent)."""
    import numpy as np

    from cxr_tools.eval.report import episode_means

    rows = []
    for table in entry.tables:
        if cls is None:
            series = episode_means(table, metric)
        else:
            sub = table[table["class"] == cls]
            series = sub.groupby("episode", sort=True)[metric].mean()
        rows.append(series.reindex(episodes).to_numpy(dtype=float))
    return np.vstack(rows)


def _estimate(entry: Entry, metric: str, cls: str | None, episodes: Any) -> tuple[dict[str, Any], Any]:
    """The entry's estimate of ``metric`` (overall or ``cls``) and its seed-averaged episode scores."""
    import numpy as np

    from cxr_tools.eval.comparison import quiet_nan, seed_group_estimate

    matrix = _matrix(entry, metric, cls, episodes)
    halves = []
    for s in entry.summaries:
        est = (
            (s.get("overall") or {}).get(metric)
            if cls is None
            else ((s.get("per_class") or {}).get(cls) or {}).get(metric)
        )
        if est and est.get("bootstrap_low") is not None and est.get("mean") is not None:
            halves.append(max(est["mean"] - est["bootstrap_low"], est["bootstrap_high"] - est["mean"]))
    within = float(np.mean(halves)) if len(halves) == len(entry.summaries) else None
    estimate = seed_group_estimate(matrix, within)
    if len(entry.summaries) == 1 and within is not None:
        estimate["interval"] = "bootstrap" if within > estimate["episode_ci95"] else "episode"
    with quiet_nan():
        return estimate, np.nanmean(matrix, axis=0)


def _rank(entries: list[Entry], first: dict[str, Any], config: CompareConfig, rule: str | None) -> CompareResult:

    from cxr_tools.eval.comparison import budget_text, pair_tests

    metric = config.metric
    episodes = sorted({int(e) for en in entries for t in en.tables for e in t["episode"].unique()})
    n_eps = {t["episode"].nunique() for en in entries for t in en.tables}
    if len(n_eps) != 1:
        raise DataError("The evaluations hold different numbers of episodes despite one episode list.", "Re-run them.")
    classes = tuple(first.get("classes") or [])
    stats = {e.name: _estimate(e, metric, None, episodes) for e in entries}
    shown = METRICS if rule is not None else THRESHOLD_FREE
    others = {e.name: {m: _estimate(e, m, None, episodes)[0]["mean"] for m in shown} for e in entries}
    present = {c for e in entries for t in e.tables for c in t["class"].unique()}
    cls_stats = {c: {e.name: _estimate(e, metric, c, episodes) for e in entries} for c in classes if c in present}
    entries.sort(key=lambda e: -stats[e.name][0]["mean"] if math.isfinite(stats[e.name][0]["mean"]) else math.inf)
    names = [e.name for e in entries]
    reference = _reference(config.reference, entries) or names[0]
    if config.reference:
        pairs = [(n, reference) for n in names if n != reference]
    else:
        pairs = [(names[j], names[i]) for i in range(len(names)) for j in range(i + 1, len(names))]
    tests = pair_tests("overall", {n: stats[n][1] for n in names}, pairs)
    class_tests = {c: pair_tests(c, {n: v[1] for n, v in by.items()}, pairs) for c, by in cls_stats.items()}
    vs_ref = {t.a: t for t in tests if t.b == reference}
    vs_ref_cls = {c: {t.a: t for t in ts if t.b == reference} for c, ts in class_tests.items()}
    rows = []
    for rank, e in enumerate(entries, start=1):
        est, t = stats[e.name][0], vs_ref.get(e.name)
        per_class = {}
        for c in cls_stats:
            ce, ct = cls_stats[c][e.name][0], vs_ref_cls[c].get(e.name)
            per_class[c] = {k: ce[k] for k in ("mean", "ci95", "low", "high", "interval")} | {
                "diff": None if ct is None else ct.diff,
                "p_value": None if ct is None else ct.p_value,
                "significant": None if ct is None else ct.significant,
            }
        leaks = sorted({str(s["leak"]) for s in e.summaries if s.get("leak")})
        budgets = list(dict.fromkeys(budget_text(s.get("settings")) for s in e.summaries))
        rows.append(
            CompareRow(
                rank=rank, name=e.name, method=str(e.summaries[0].get("method")), kind=e.summaries[0].get("kind"),
                eval_dir=e.dirs[0], eval_dirs=tuple(e.dirs), seeds=tuple(e.seeds),
                mean=est["mean"], ci95=est["ci95"], low=est["low"], high=est["high"], interval=est["interval"],
                n_episodes=int(est["n"]),
                diff=None if t is None else t.diff, diff_ci95=None if t is None else t.ci95,
                p_value=None if t is None else t.p_value, p_raw=None if t is None else t.p_raw,
                significant=None if t is None else t.significant, note="" if t is None else t.note,
                leak="; ".join(leaks) or None, budget=" | ".join(b for b in budgets if b),
                others=others[e.name], per_class=per_class,
            )
        )  # fmt: skip
    all_tests = tuple([*tests, *(t for ts in class_tests.values() for t in ts)])
    result = CompareResult(
        metric=metric,
        episode_list_hash=str(first["episode_list_hash"]),
        episodes=len(episodes),
        classes=classes,
        rows=tuple(rows),
        tests=all_tests,
        reference=reference,
        verdict=verdict(rows, metric, reference, bool(config.reference), rule),
        output=Path(config.output) if config.output is not None else None,
        threshold=rule,
        all_positive=all_positive(entries[0].tables[0]) if rule is not None else None,
    )
    if config.output is None:
        return result
    files = write_comparison(result, Path(config.output), overwrite=config.overwrite)
    return CompareResult(**{**result.__dict__, "files": tuple(files)})


def _reference(spec: str | None, entries: Sequence[Entry]) -> str | None:
    if not spec:
        return None
    for e in entries:
        if spec == e.name or any(Path(spec).resolve() in (d.resolve(), d.parent.resolve()) for d in e.dirs):
            return e.name
    raise ConfigError(f"--reference {spec} is none of the compared methods.",
                      f"Use one of: {', '.join(e.name for e in entries)} (or one of their paths).")  # fmt: skip
