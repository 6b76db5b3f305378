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
settings, form one *group* (or ``--group NAME=RUN,RUN``): its per-episode scores are the mean over the seeds.

**Intervals and tests** come from one variance model (:mod:`cxr_tools.eval.variance`): episodes, the support and
query patients they reuse (``episode_patients.csv``) and, for a seed group, the between-seed variance. A paired
difference is that model fitted to the episode-wise difference plus both groups' seed variances, so its p-value
and interval agree. All pairs, or all against ``--reference``, overall and per class, form ONE Holm family; a
difference is significant when its adjusted p < 0.05. A trained method compared from one run is marked: the
verdict is about that trained model. Every output shows a summary's ``leak`` and the adaptation budget. Written to
``OUT/comparison.{csv,md,png,json}`` when an output directory is given (:mod:`cxr_tools.engine.compare.output`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.engine.compare.inputs import (
    MIN_EPISODE_LIST_VERSION,
    Entry,
    check_same_cache,
    check_same_episodes,
    check_versions,
    find_evaluation,
    load_design,
    load_evaluation,
    make_entries,
    parse_group,
    shared_rule,
)
from cxr_tools.engine.compare.output import all_positive, verdict, write_comparison
from cxr_tools.errors import ConfigError, DataError
from cxr_tools.eval.comparison import budget_text, pair_tests
from cxr_tools.eval.metrics import METRICS, THRESHOLD_FREE
from cxr_tools.eval.report import metric_series, split_metric
from cxr_tools.eval.variance import difference, estimate

#: Said of a trained method compared from one run: its training-seed variance is unknown.
ONE_SEED_NOTE = "one trained model (one seed): the verdict is about this model, not the method"

__all__ = ["MIN_EPISODE_LIST_VERSION", "CompareConfig", "CompareResult", "CompareRow", "compare", "find_evaluation"]


@dataclass(frozen=True)
class CompareConfig:
    """Options of ``cxr compare``.

    Attributes:
        inputs: evaluation directories, or run directories with an ``eval/`` evaluation.
        output: directory for comparison.{csv,md,png,json} (None = print only).
        metric: the ranking metric (auc, ap, f1, precision, recall); on generalized evaluations also
            ``METRIC-seen``, ``METRIC-unseen`` and ``METRIC-harmonic`` (:func:`~cxr_tools.eval.report.metric_series`).
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
    patients: int
    diff: float | None
    diff_ci95: float | None
    diff_low: float | None
    diff_high: float | None
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
    patients: int = 0
    notes: tuple[str, ...] = ()


def compare(config: CompareConfig) -> CompareResult:
    """Rank the evaluations of ``config.inputs`` (and ``config.groups``); see the module docstring."""

    base, part = split_metric(config.metric)
    if base not in METRICS:
        raise ConfigError(
            f"Unknown metric '{config.metric}'.",
            f"Use one of: {', '.join(METRICS)}; on generalized evaluations also e.g. auc-seen, auc-unseen, "
            "auc-harmonic.",
        )
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
    check_same_episodes(dirs, summaries, base)
    if part is not None:
        standard = [str(d) for d, s in zip(dirs, summaries, strict=True) if not s.get("seen_ways")]
        if standard:
            raise ConfigError(
                f"--metric {config.metric} needs generalized evaluations (cxr evaluate --seen-ways); these are "
                f"standard: {', '.join(standard)}.",
                f"Compare on --metric {base}, or evaluate with --seen-ways.",
            )
    entries = make_entries(loaded, explicit, config.auto_group)
    first_dir = next(iter(loaded.values()))[0]
    return _rank(entries, summaries[0], first_dir, config, shared_rule(summaries))


# --- ranking and tests ------------------------------------------------------------------------------------------


def _matrix(entry: Entry, metric: str, cls: str | None, episodes: Any) -> Any:
    """Scores ``[seeds, episodes]`` of ``metric`` (episode means, or ``cls``'s rows; NaN where absent)."""

    rows = []
    for table in entry.tables:
        if cls is None:
            series = metric_series(table, metric)
        else:
            sub = table[table["class"] == cls]
            series = sub.groupby("episode", sort=True)[split_metric(metric)[0]].mean()
        rows.append(series.reindex(episodes).to_numpy(dtype=float))
    return np.vstack(rows)


def _trained(entry: Entry) -> bool:
    """A method with a training run: its seeds vary, so one run speaks for that trained model only."""
    return any(s.get("run") for s in entry.summaries)


def _rank(
    entries: list[Entry], first: dict[str, Any], first_dir: Path, config: CompareConfig, rule: str | None
) -> CompareResult:

    metric = config.metric
    episodes = sorted({int(e) for en in entries for t in en.tables for e in t["episode"].unique()})
    n_eps = {t["episode"].nunique() for en in entries for t in en.tables}
    if len(n_eps) != 1:
        raise DataError("The evaluations hold different numbers of episodes despite one episode list.", "Re-run them.")
    design, design_note = load_design(first_dir, episodes)

    part = split_metric(metric)[1]
    unseen, seen = list(first.get("classes") or []), list(first.get("seen_classes") or [])
    # per class: a part's own classes (none for the harmonic mean, a property of the two groups only)
    classes = tuple({None: unseen + seen, "seen": seen, "unseen": unseen, "harmonic": []}[part])
    present = {c for e in entries for t in e.tables for c in t["class"].unique()}
    scopes: list[str | None] = [None, *(c for c in classes if c in present)]
    matrices = {(e.name, c): _matrix(e, metric, c, episodes) for e in entries for c in scopes}
    stats = {(e.name, c): estimate(matrices[e.name, c], design, seeded=_trained(e)) for e in entries for c in scopes}
    shown = list(METRICS if rule is not None else THRESHOLD_FREE)
    if all(s.get("seen_ways") for en in entries for s in en.summaries):  # generalized: every part's mean too
        shown += [f"auc-{p}" for p in ("seen", "unseen", "harmonic")]
    others = {
        e.name: {m: estimate(_matrix(e, m, None, episodes), design, seeded=_trained(e)).mean for m in shown}
        for e in entries
    }
    entries.sort(key=lambda e: -stats[e.name, None].mean if math.isfinite(stats[e.name, None].mean) else math.inf)
    names = [e.name for e in entries]
    reference = _reference(config.reference, entries) or names[0]
    if config.reference:
        pairs = [(n, reference) for n in names if n != reference]
    else:
        pairs = [(names[j], names[i]) for i in range(len(names)) for j in range(i + 1, len(names))]
    family = [
        ("overall" if c is None else c, a, b, difference(matrices[a, c], matrices[b, c], design))
        for c in scopes
        for a, b in pairs
    ]
    all_tests = tuple(pair_tests(family))
    vs_ref = {(t.scope, t.a): t for t in all_tests if t.b == reference}
    rows = []
    for rank, e in enumerate(entries, start=1):
        est, t = stats[e.name, None], vs_ref.get(("overall", e.name))
        per_class = {}
        for c in scopes[1:]:
            ce, ct = stats[e.name, c], vs_ref.get((str(c), e.name))
            per_class[str(c)] = {
                "mean": ce.mean,
                "ci95": ce.half,
                "low": ce.low,
                "high": ce.high,
                "interval": ce.kind,
                "n": ce.n,
                "patients": ce.patients,
                "diff": None if ct is None else ct.diff,
                "p_value": None if ct is None else ct.p_value,
                "significant": None if ct is None else ct.significant,
            }
        leaks = sorted({str(s["leak"]) for s in e.summaries if s.get("leak")})
        budgets = list(dict.fromkeys(budget_text(s.get("settings")) for s in e.summaries))
        notes = [t.note] if t is not None and t.note else []
        if _trained(e) and len(e.summaries) == 1:
            notes.append(ONE_SEED_NOTE)
        rows.append(
            CompareRow(
                rank=rank,
                name=e.name,
                method=str(e.summaries[0].get("method")),
                kind=e.summaries[0].get("kind"),
                eval_dir=e.dirs[0],
                eval_dirs=tuple(e.dirs),
                seeds=tuple(e.seeds),
                mean=est.mean,
                ci95=est.half,
                low=est.low,
                high=est.high,
                interval=est.kind,
                n_episodes=est.n,
                patients=est.patients,
                diff=None if t is None else t.diff,
                diff_ci95=None if t is None else t.ci95,
                diff_low=None if t is None else t.low,
                diff_high=None if t is None else t.high,
                p_value=None if t is None else t.p_value,
                p_raw=None if t is None else t.p_raw,
                significant=None if t is None else t.significant,
                note="; ".join(notes),
                leak="; ".join(leaks) or None,
                budget=" | ".join(b for b in budgets if b),
                others=others[e.name],
                per_class=per_class,
            )
        )
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
        patients=design.patients,
        notes=tuple(n for n in (design_note, *_lineage_notes(entries)) if n),
    )
    if config.output is None:
        return result
    files = write_comparison(result, Path(config.output), overwrite=config.overwrite)
    return CompareResult(**{**result.__dict__, "files": tuple(files)})


def _lineage_notes(entries: Sequence[Entry]) -> list[str]:
    """Each method's pretraining notes (an encoder that has seen the evaluated dataset's images), as its
    evaluations recorded them, so a comparison names them as ``cxr evaluate`` did."""
    out = []
    for e in entries:
        for note in dict.fromkeys(str(n) for s in e.summaries for n in s.get("lineage_notes") or []):
            out.append(f"{e.name}: {note}")
    return out


def _reference(spec: str | None, entries: Sequence[Entry]) -> str | None:
    if not spec:
        return None
    for e in entries:
        if spec == e.name or any(Path(spec).resolve() in (d.resolve(), d.parent.resolve()) for d in e.dirs):
            return e.name
    raise ConfigError(
        f"--reference {spec} is none of the compared methods.",
        f"Use one of: {', '.join(e.name for e in entries)} (or one of their paths).",
    )
