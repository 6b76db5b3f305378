"""Inputs of ``cxr compare``: find and load evaluations, refuse what cannot be compared, form seed groups.

See :mod:`cxr_tools.engine.compare` for what is refused and how runs are grouped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxr_tools.data.sampling.episodes import EPISODE_LIST_VERSION
from cxr_tools.errors import ConfigError, DataError, InputError
from cxr_tools.eval.metrics import METRICS, THRESHOLD_FREE
from cxr_tools.eval.thresholds import THRESHOLDED
from cxr_tools.eval.variance import design_from_tables

THRESHOLD_METRICS = THRESHOLDED
#: Episode lists older than this were image-disjoint only, not patient-disjoint.
MIN_EPISODE_LIST_VERSION = EPISODE_LIST_VERSION
#: Training-config keys that do not make two runs different methods (besides the seed).
_BOOKKEEPING = frozenset(
    {
        "seed",
        "output",
        "out",
        "run_dir",
        "resume",
        "overwrite",
        "device",
        "threads",
        "workers",
        "num_workers",
        "requeue",
        "quiet",
        "progress",
        "amp",
        "log_every",
        "log_every_steps",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
    }
)


@dataclass
class Entry:
    """One compared method: an evaluation, or the evaluations of a seed group."""

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


def load_evaluation(eval_dir: Path) -> tuple[dict[str, Any], Any]:
    try:
        summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {eval_dir / 'summary.json'}: {exc}.", "Re-run cxr evaluate.") from exc
    csv = eval_dir / "episodes.csv"
    if not csv.is_file():
        raise InputError(f"{eval_dir} lacks episodes.csv.", "Re-run cxr evaluate with --overwrite.")
    table = pd.read_csv(csv, dtype={"class": str})
    measured = [m for m in summary.get("metrics") or METRICS if m in METRICS]
    missing = [c for c in ("episode", "class", *THRESHOLD_FREE, *measured) if c not in table.columns]
    if missing or "episode_list_hash" not in summary:
        raise InputError(f"{eval_dir} is not a cxr evaluation (missing {', '.join(missing) or 'the hash'}).")
    return summary, table


#: Said when an evaluation predates episode_patients.csv: its support patients cannot enter the variance.
QUERY_ONLY_NOTE = (
    "support patients not recorded (evaluation made by cxr < 0.4): intervals count query patients only; "
    "re-evaluate to include them"
)


def load_design(eval_dir: Path, episodes: Sequence[int]) -> tuple[Any, str]:
    """The variance model's design (which patients each episode used) of an evaluation, and a note when it is
    partial: ``episode_patients.csv``, else the query patients of ``scores.csv`` (older evaluations)."""

    path = eval_dir / "episode_patients.csv"
    if path.is_file():
        table = pd.read_csv(path, dtype={"patient": str, "role": str})
        return design_from_tables(table, list(episodes)), ""
    scores = eval_dir / "scores.csv"
    if not scores.is_file():
        raise InputError(f"{eval_dir} lacks episode_patients.csv and scores.csv.", "Re-run cxr evaluate.")
    rows = pd.read_csv(scores, usecols=["episode", "row", "patient"], dtype={"patient": str})
    rows = rows.drop_duplicates(["episode", "row"]).assign(role="query")
    return design_from_tables(rows, list(episodes)), QUERY_ONLY_NOTE


def parse_group(spec: str) -> tuple[str, list[Path]]:
    name, sep, members = spec.partition("=")
    paths = [Path(m.strip()) for m in members.split(",") if m.strip()]
    if not sep or not name.strip() or len(paths) < 2:
        raise ConfigError(f"--group {spec!r} is not NAME=RUN,RUN,...", "Name the group and give two or more runs.")
    return name.strip(), paths


def check_versions(dirs: Sequence[Path], summaries: Sequence[dict[str, Any]]) -> None:
    old = [
        str(d)
        for d, s in zip(dirs, summaries, strict=True)
        if int(s.get("episode_list_version") or 0) < MIN_EPISODE_LIST_VERSION
    ]
    if old:
        raise DataError(
            f"{', '.join(old)} used the old episode lists (before version {MIN_EPISODE_LIST_VERSION}), whose "
            "support and query sets could share patients.",
            "Re-evaluate with this version of cxr evaluate (--overwrite), then compare again.",
        )


#: The parts of a cache's content fingerprint (``summary.json`` ``cache_content``), as refusals name them.
CONTENT_PARTS: dict[str, str] = {
    "rows": "index rows (image ids)",
    "patients": "patients",
    "labels": "labels",
    "splits": "splits",
    "pixels": "pixels",
    "preprocessing": "preprocessing parameters",
}


def check_same_cache(dirs: Sequence[Path], summaries: Sequence[dict[str, Any]]) -> None:
    """Refuse evaluations made on caches of different *content* (``cache_content``: index rows, patients, labels,
    splits, pixels, preprocessing), naming what differs; a byte-identical re-preprocessed cache passes. Summaries
    from before content fingerprints are compared by manifest as they were, and are never matched with new ones
    (their episode hashes are addressed differently): those must be re-evaluated."""
    pairs = list(zip(dirs, summaries, strict=True))
    new = [(d, s) for d, s in pairs if isinstance(s.get("cache_content"), dict)]
    old = [(d, s) for d, s in pairs if not isinstance(s.get("cache_content"), dict)]
    if new and old:
        raise DataError(
            f"{', '.join(str(d) for d, _ in old)} were evaluated before episodes were addressed by the cache's "
            f"content, so their episode lists cannot be matched with {new[0][0]}'s.",
            "Re-evaluate them with this version of cxr evaluate (--overwrite), then compare again.",
        )
    if new:
        _check_same_content(new)
        return
    known = [(d, s) for d, s in old if s.get("cache_manifest_hash")]
    if len({s["cache_manifest_hash"] for _, s in known}) <= 1:
        return
    (d0, s0) = known[0]
    (d1, s1) = next((d, s) for d, s in known if s["cache_manifest_hash"] != s0["cache_manifest_hash"])
    what = _preprocessing_difference(s0, s1) or (
        f"cache manifest {s0['cache_manifest_hash']} vs {s1['cache_manifest_hash']}"
    )
    raise DataError(
        f"{d0} and {d1} were evaluated on different caches ({what}), so they cannot be compared.",
        "Evaluate every method on the same cache (cxr evaluate --data CACHE); re-evaluated with this version, "
        "caches of identical content (e.g. preprocessed twice) compare.",
    )


def _check_same_content(known: Sequence[tuple[Path, dict[str, Any]]]) -> None:
    (d0, s0) = known[0]
    c0 = s0["cache_content"]
    for d1, s1 in known[1:]:
        c1 = s1["cache_content"]
        if c0.get("version") != c1.get("version"):
            raise DataError(
                f"{d0} and {d1} fingerprinted their caches differently (content version {c0.get('version')} vs "
                f"{c1.get('version')}).",
                "Re-evaluate both with this version of cxr evaluate (--overwrite), then compare again.",
            )
        differ = [label for key, label in CONTENT_PARTS.items() if c0.get(key) != c1.get(key)]
        if not differ:
            continue
        detail = _preprocessing_difference(s0, s1) if CONTENT_PARTS["preprocessing"] in differ else ""
        raise DataError(
            f"{d0} and {d1} were evaluated on caches whose {', '.join(differ)} differ"
            f"{f' ({detail})' if detail else ''}, so their episodes are not the same and they cannot be compared.",
            "Evaluate every method on the same cache (cxr evaluate --data CACHE), or on a cache preprocessed "
            "identically from the same data.",
        )


def _preprocessing_difference(s0: dict[str, Any], s1: dict[str, Any]) -> str:
    """``size: 32 vs 48; clahe: False vs True`` from two summaries' ``cache_preprocessing`` ('' when equal)."""
    p0, p1 = dict(s0.get("cache_preprocessing") or {}), dict(s1.get("cache_preprocessing") or {})
    keys = sorted(k for k in set(p0) | set(p1) if p0.get(k) != p1.get(k))
    return "; ".join(f"{k}: {p0.get(k)} vs {p1.get(k)}" for k in keys)


def check_same_episodes(dirs: Sequence[Path], summaries: Sequence[dict[str, Any]], metric: str) -> None:
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
        rules = {threshold_label(s) for s in summaries}
        if "none" in rules:
            raise DataError(
                f"{metric} was not measured by an evaluation made with --threshold none.",
                "Re-run cxr evaluate with --threshold support (or a number), or compare on --metric auc.",
            )
        if len(rules) > 1:
            raise DataError(
                f"{metric} depends on the threshold rule, and these evaluations used different ones "
                f"({', '.join(sorted(rules))}).",
                "Re-run cxr evaluate with the same --threshold, or compare on --metric auc.",
            )


def threshold_label(summary: dict[str, Any]) -> str:
    """The threshold rule of an evaluation (``support``, ``0.5``, ``none``); summaries before the rule had a
    number."""
    value = summary.get("threshold")
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def shared_rule(summaries: Sequence[dict[str, Any]]) -> str | None:
    """The threshold rule every evaluation shares, or None when they differ (or measured no thresholded metric):
    F1 / precision / recall are then left out of the comparison rather than pooled across rules."""
    rules = {threshold_label(s) for s in summaries}
    return next(iter(rules)) if len(rules) == 1 and rules != {"none"} else None


# --- seed groups ------------------------------------------------------------------------------------------------


def run_config(summary: dict[str, Any], eval_dir: Path) -> tuple[dict[str, Any] | None, Any]:
    """``(training config without bookkeeping keys, seed)`` of an evaluation's run (None without a config)."""

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


def make_entries(loaded: dict[Path, Any], explicit: list[tuple[str, list[Path]]], auto: bool) -> list[Entry]:
    """Explicit groups, then automatic seed groups, then single evaluations (each evaluation in one entry)."""
    used: set[Path] = set()
    entries: list[Entry] = []
    for name, paths in explicit:
        keys = [find_evaluation(m).resolve() for m in paths]
        if any(k in used for k in keys) or len(set(keys)) < len(keys):
            raise ConfigError(f"An evaluation is in two groups (group {name}).", "Put each run in one group.")
        used |= set(keys)
        seeds = [run_config(loaded[k][1], loaded[k][0])[1] for k in keys]
        dirs, tables = [loaded[k][0] for k in keys], [loaded[k][2] for k in keys]
        entries.append(Entry(name, dirs, [loaded[k][1] for k in keys], tables, seeds))
    buckets: dict[str, list[tuple[Path, Any]]] = {}
    for key, (d, summary, _) in loaded.items():
        if key in used:
            continue
        cfg, seed = run_config(summary, d) if auto else (None, None)
        settings = [summary.get(k) for k in ("method_label", "settings", "kind", "architecture", "threshold")]
        bucket = json.dumps([settings, cfg], sort_keys=True, default=str) if cfg is not None else str(key)
        buckets.setdefault(bucket, []).append((key, seed))
    split = []  # a bucket whose seeds repeat is not a seed group (same run evaluated twice, or a rerun)
    for members in buckets.values():
        seeds = [str(s) for _, s in members]
        split += [members] if len(set(seeds)) == len(seeds) else [[m] for m in members]
    for members in split:
        group = [k for k, _ in members]
        summaries = [loaded[k][1] for k in group]
        name = str(summaries[0].get("name") or summaries[0].get("method_label") or summaries[0].get("method"))
        if len(group) > 1:
            name = f"{name} [seeds {', '.join(str(s) for _, s in members)}]"
        dirs, tables = [loaded[k][0] for k in group], [loaded[k][2] for k in group]
        entries.append(Entry(name, dirs, summaries, tables, [s for _, s in members]))
    seen: dict[str, int] = {}
    for e in entries:  # unique display names
        seen[e.name] = seen.get(e.name, 0) + 1
        if seen[e.name] > 1:
            e.name = f"{e.name} #{seen[e.name]}"
    return entries
