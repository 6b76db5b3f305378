"""Engine of ``cxr compare RUN_OR_EVAL_DIR...``: rank evaluated methods on the *same* episodes, honestly.

Each input is an evaluation directory (``summary.json`` + ``episodes.csv`` from ``cxr evaluate``) or a run whose
``eval/`` holds one. Refused, with what to do: evaluations made with episode lists older than
:data:`MIN_EPISODE_LIST_VERSION` (not patient-disjoint; re-evaluate), evaluations on different caches (naming
the preprocessing that differs), on different episode lists (naming each hash), and, for F1 / precision /
recall, at different thresholds.

**Seeds.** Evaluations of runs whose training configs (``RUN/config.yaml``) are identical except for the seed
and bookkeeping (output, resume, device, threads, workers, checkpoint/log cadence), evaluated with identical
settings, form one *group* (or ``--group NAME=RUN,RUN``): its per-episode scores are the mean over the seeds,
and its interval adds the between-seed variance (:func:`~cxr_tools.eval.comparison.seed_group_estimate`). A
single evaluation keeps the wider of its episode-t and patient-bootstrap intervals.

**Tests.** Paired differences on (seed-averaged) episode scores for all pairs, or all against ``--reference``;
Holm-adjusted as one family for the overall metric and one family per class; a difference is significant when
its adjusted p < 0.05. Every output shows a summary's ``leak`` and the adaptation budget. Written to
``OUT/comparison.{csv,md,png,json}`` when an output directory is given (:mod:`cxr_tools.engine.compare_output`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tools.engine.compare_output import verdict, write_comparison
from cxr_tools.errors import ConfigError, DataError, InputError
from cxr_tools.eval.metrics import METRICS

COMPARISON_FILES: tuple[str, ...] = ("comparison.csv", "comparison.md", "comparison.png", "comparison.json")
THRESHOLD_METRICS = ("f1", "precision", "recall")
#: Episode lists older than this were not patient-disjoint (cxr_tools.data.episodes.EPISODE_LIST_VERSION).
MIN_EPISODE_LIST_VERSION = 2
#: Training-config keys that do not make two runs different methods (besides the seed).
_BOOKKEEPING = frozenset({"seed", "output", "out", "run_dir", "resume", "overwrite", "device", "threads", "workers",
                          "num_workers", "requeue", "quiet", "progress", "amp", "log_every", "log_every_steps",
                          "checkpoint_every_steps", "checkpoint_every_minutes"})  # fmt: skip


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


@dataclass
class _Entry:
    name: str
    dirs: list[Path]
    summaries: list[dict[str, Any]]
    tables: list[Any]
    seeds: list[Any]


def find_evaluation(path: Path) -> Path:
    """The evaluation directory of ``path`` (itself, or ``path/eval``); a clear error when there is none."""
    path = Path(path)
    if (path / "summary.json").is_file():
        return path
    if (path / "eval" / "summary.json").is_file():
        return path / "eval"
    if not path.exists():
        raise InputError(
            f"{path} does not exist.", "Pass evaluation directories or runs evaluated with `cxr evaluate`."
        )
    raise InputError(
        f"{path} holds no evaluation (no summary.json, nor eval/summary.json).",
        f"Run `cxr evaluate {path} --data CACHE` first, or pass the evaluation directory (-o of cxr evaluate).",
    )


def _load(eval_dir: Path) -> tuple[dict[str, Any], Any]:
    import pandas as pd

    try:
        summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {eval_dir / 'summary.json'}: {exc}.", "Re-run cxr evaluate.") from exc
    csv = eval_dir / "episodes.csv"
    if not csv.is_file():
        raise InputError(f"{eval_dir} lacks episodes.csv.", "Re-run cxr evaluate with --overwrite.")
    table = pd.read_csv(csv, dtype={"class": str})
    missing = [c for c in ("episode", "class", *METRICS) if c not in table.columns]
    if missing or "episode_list_hash" not in summary:
        raise InputError(f"{eval_dir} is not a cxr evaluation (missing {', '.join(missing) or 'the hash'}).")
    return summary, table


def compare(config: CompareConfig) -> CompareResult:
    """Rank the evaluations of ``config.inputs`` (and ``config.groups``); see the module docstring."""
    if config.metric not in METRICS:
        raise ConfigError(f"Unknown metric '{config.metric}'.", f"Use one of: {', '.join(METRICS)}.")
    explicit = [_parse_group(g) for g in config.groups]
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
    loaded = {d.resolve(): (d, *_load(d)) for d in dirs}
    summaries = [s for _, s, _ in loaded.values()]
    _check_versions(dirs, summaries)
    _check_same_cache(dirs, summaries)
    _check_same_episodes(dirs, summaries, config.metric)
    entries = _entries(loaded, explicit, config.auto_group)
    return _rank(entries, summaries[0], config)


def _parse_group(spec: str) -> tuple[str, list[Path]]:
    name, sep, members = spec.partition("=")
    paths = [Path(m.strip()) for m in members.split(",") if m.strip()]
    if not sep or not name.strip() or len(paths) < 2:
        raise ConfigError(f"--group {spec!r} is not NAME=RUN,RUN,...", "Name the group and give two or more runs.")
    return name.strip(), paths


def _check_versions(dirs: Sequence[Path], summaries: Sequence[dict[str, Any]]) -> None:
    old = [str(d) for d, s in zip(dirs, summaries, strict=True)
           if int(s.get("episode_list_version") or 0) < MIN_EPISODE_LIST_VERSION]  # fmt: skip
    if old:
        raise DataError(
            f"{', '.join(old)} used the old episode lists (before version {MIN_EPISODE_LIST_VERSION}), whose "
            "support and query sets could share patients.",
            "Re-evaluate with this version of cxr evaluate (--overwrite), then compare again.",
        )


def _check_same_cache(dirs: Sequence[Path], summaries: Sequence[dict[str, Any]]) -> None:
    known = [(d, s) for d, s in zip(dirs, summaries, strict=True) if s.get("cache_manifest_hash")]
    if len({s["cache_manifest_hash"] for _, s in known}) <= 1:
        return
    (d0, s0) = known[0]
    (d1, s1) = next((d, s) for d, s in known if s["cache_manifest_hash"] != s0["cache_manifest_hash"])
    p0, p1 = dict(s0.get("cache_preprocessing") or {}), dict(s1.get("cache_preprocessing") or {})
    keys = sorted(k for k in set(p0) | set(p1) if p0.get(k) != p1.get(k))
    what = "; ".join(f"{k}: {p0.get(k)} vs {p1.get(k)}" for k in keys) or (
        f"cache manifest {s0['cache_manifest_hash']} vs {s1['cache_manifest_hash']}"
    )
    raise DataError(
        f"{d0} and {d1} were evaluated on different caches ({what}), so they cannot be compared.",
        "Evaluate every method on the same cache (cxr evaluate --data CACHE).",
    )


def _check_same_episodes(dirs: Sequence[Path], summaries: Sequence[dict[str, Any]], metric: str) -> None:
    hashes = {str(s["episode_list_hash"]) for s in summaries}
    if len(hashes) > 1:
        detail = "; ".join(
            f"{d} ({s.get('method_label') or s.get('method')}): {s['episode_list_hash']}"
            for d, s in zip(dirs, summaries, strict=True)
        )
        raise DataError(
            f"These evaluations used different episode lists, so they cannot be compared: {detail}.",
            "Re-run cxr evaluate with the same --data, --meta-split, --ways/--shots/--queries, --episodes and --seed.",
        )
    if metric in THRESHOLD_METRICS:
        thresholds = {float(s.get("threshold", math.nan)) for s in summaries}
        if len(thresholds) > 1:
            raise DataError(
                f"{metric} depends on the threshold, and these evaluations used different ones "
                f"({', '.join(f'{t:g}' for t in sorted(thresholds))}).",
                "Re-run cxr evaluate with the same --threshold, or compare on --metric auc.",
            )


# --- seed groups ------------------------------------------------------------------------------------------------


def run_config(summary: dict[str, Any], eval_dir: Path) -> tuple[dict[str, Any] | None, Any]:
    """``(training config without bookkeeping keys, seed)`` of an evaluation's run (None without a config)."""
    import yaml

    candidates = []
    if summary.get("run"):
        run = Path(summary["run"])
        candidates.append(run.parent if run.name == "model" else run)
    candidates.append(eval_dir.parent)
    for run in candidates:
        path = run / "config.yaml"
        if path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                return None, None
            return {k: v for k, v in cfg.items() if k not in _BOOKKEEPING}, cfg.get("seed")
    return None, None


def _entries(loaded: dict[Path, Any], explicit: list[tuple[str, list[Path]]], auto: bool) -> list[_Entry]:
    """Explicit groups, then automatic seed groups, then single evaluations (each evaluation in one entry)."""
    used: set[Path] = set()
    entries: list[_Entry] = []
    for name, members in explicit:
        keys = [find_evaluation(m).resolve() for m in members]
        if any(k in used for k in keys) or len(set(keys)) < len(keys):
            raise ConfigError(f"An evaluation is in two groups (group {name}).", "Put each run in one group.")
        used |= set(keys)
        seeds = [run_config(loaded[k][1], loaded[k][0])[1] for k in keys]
        entries.append(_Entry(name, [loaded[k][0] for k in keys], [loaded[k][1] for k in keys],
                              [loaded[k][2] for k in keys], seeds))  # fmt: skip
    buckets: dict[str, list[tuple[Path, Any]]] = {}
    for key, (d, summary, _) in loaded.items():
        if key in used:
            continue
        cfg, seed = run_config(summary, d) if auto else (None, None)
        settings = [summary.get(k) for k in ("method_label", "settings", "kind", "architecture", "threshold")]
        bucket = json.dumps([settings, cfg], sort_keys=True, default=str) if cfg is not None else str(key)
        buckets.setdefault(bucket, []).append((key, seed))
    for members in buckets.values():
        keys = [k for k, _ in members]
        summaries = [loaded[k][1] for k in keys]
        name = str(summaries[0].get("name") or summaries[0].get("method_label") or summaries[0].get("method"))
        if len(keys) > 1:
            name = f"{name} [seeds {', '.join(str(s) for _, s in members)}]"
        entries.append(_Entry(name, [loaded[k][0] for k in keys], summaries, [loaded[k][2] for k in keys],
                              [s for _, s in members]))  # fmt: skip
    seen: dict[str, int] = {}
    for e in entries:  # unique display names
        seen[e.name] = seen.get(e.name, 0) + 1
        if seen[e.name] > 1:
            e.name = f"{e.name} #{seen[e.name]}"
    return entries


# --- ranking and tests ------------------------------------------------------------------------------------------


def _matrix(entry: _Entry, metric: str, cls: str | None, episodes: Any) -> Any:
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


def _estimate(entry: _Entry, metric: str, cls: str | None, episodes: Any) -> tuple[dict[str, Any], Any]:
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


def _rank(entries: list[_Entry], first: dict[str, Any], config: CompareConfig) -> CompareResult:

    from cxr_tools.eval.comparison import budget_text, pair_tests

    metric = config.metric
    episodes = sorted({int(e) for en in entries for t in en.tables for e in t["episode"].unique()})
    n_eps = {t["episode"].nunique() for en in entries for t in en.tables}
    if len(n_eps) != 1:
        raise DataError("The evaluations hold different numbers of episodes despite one episode list.", "Re-run them.")
    classes = tuple(first.get("classes") or [])
    stats = {e.name: _estimate(e, metric, None, episodes) for e in entries}
    others = {e.name: {m: _estimate(e, m, None, episodes)[0]["mean"] for m in METRICS} for e in entries}
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
        verdict=verdict(rows, metric, reference, bool(config.reference)),
        output=Path(config.output) if config.output is not None else None,
    )
    if config.output is None:
        return result
    files = write_comparison(result, Path(config.output), overwrite=config.overwrite)
    return CompareResult(**{**result.__dict__, "files": tuple(files)})


def _reference(spec: str | None, entries: Sequence[_Entry]) -> str | None:
    if not spec:
        return None
    for e in entries:
        if spec == e.name or any(Path(spec).resolve() in (d.resolve(), d.parent.resolve()) for d in e.dirs):
            return e.name
    raise ConfigError(f"--reference {spec} is none of the compared methods.",
                      f"Use one of: {', '.join(e.name for e in entries)} (or one of their paths).")  # fmt: skip
