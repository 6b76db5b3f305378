"""Engine of ``cxr compare RUN_OR_EVAL_DIR...``: rank evaluated methods on the *same* episodes, with paired CIs.

Each input is an evaluation directory (holding ``summary.json`` and ``episodes.csv`` from ``cxr evaluate``) or a
run directory whose ``eval/`` holds one. Evaluations on different episode lists (different cache, split,
ways/shots/queries, episode count or seed: a different ``episode_list_hash``) are refused, naming each input and
its hash, because their numbers are not comparable episode by episode. For threshold-dependent metrics (F1,
precision, recall) the thresholds must agree too.

Everything is recomputed from ``episodes.csv`` with :mod:`cxr_tools.eval.report` (so it equals the summaries):
overall mean ± 95% CI over episodes of the episode mean; per-class means ± CI; for every method but the best,
the paired difference to the best over the same episodes (:func:`~cxr_tools.eval.metrics.paired_difference`:
mean ± CI and the paired t-test p-value). A difference counts as significant when p < 0.05 (its 95% CI then
excludes 0). Written to ``OUT/comparison.csv``, ``comparison.md``, ``comparison.png`` and ``comparison.json``
when an output directory is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tools.errors import ConfigError, DataError, InputError, OutputExistsError
from cxr_tools.eval.metrics import METRICS

COMPARISON_FILES: tuple[str, ...] = ("comparison.csv", "comparison.md", "comparison.png", "comparison.json")
THRESHOLD_METRICS = ("f1", "precision", "recall")
ALPHA = 0.05


@dataclass(frozen=True)
class CompareConfig:
    """Options of ``cxr compare``.

    Attributes:
        inputs: evaluation directories, or run directories with an ``eval/`` evaluation.
        output: directory for comparison.{csv,md,png,json} (None = print only).
        metric: the ranking metric (auc, ap, f1, precision, recall).
        overwrite: replace an existing comparison in ``output``.
    """

    inputs: tuple[Path, ...]
    output: Path | None = None
    metric: str = "auc"
    overwrite: bool = False


@dataclass(frozen=True)
class CompareRow:
    """One evaluated method in the ranking; ``diff_*`` compare it with the best (``self - best``)."""

    rank: int
    name: str
    method: str
    kind: str | None
    eval_dir: Path
    mean: float
    ci95: float
    n_episodes: int
    diff: float | None
    diff_ci95: float | None
    p_value: float | None
    significant: bool | None
    others: dict[str, float]
    per_class: dict[str, dict[str, float]]


@dataclass(frozen=True)
class CompareResult:
    """The ranking (best first), the verdict line, and the files written."""

    metric: str
    episode_list_hash: str
    episodes: int
    classes: tuple[str, ...]
    rows: tuple[CompareRow, ...]
    verdict: str
    output: Path | None
    files: tuple[Path, ...] = field(default_factory=tuple)


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


def _labels(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Unique display names: the evaluation's name (``run:method``), which says both what was trained and how it
    was adapted; duplicates get a ``#n`` suffix."""
    methods = [str(s.get("method_label") or s.get("method")) for s in summaries]
    out = [str(s.get("name") or m) for s, m in zip(summaries, methods, strict=True)]
    seen: dict[str, int] = {}
    for i, label in enumerate(out):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            out[i] = f"{label} #{seen[label]}"
    return out


def compare(config: CompareConfig) -> CompareResult:
    """Rank the evaluations of ``config.inputs``; see the module docstring."""
    import numpy as np

    from cxr_tools.eval.metrics import paired_difference
    from cxr_tools.eval.report import aggregate, episode_means

    if config.metric not in METRICS:
        raise ConfigError(f"Unknown metric '{config.metric}'.", f"Use one of: {', '.join(METRICS)}.")
    if not config.inputs:
        raise ConfigError("Nothing to compare.", "Pass one or more evaluated runs or evaluation directories.")
    dirs = [find_evaluation(Path(p)) for p in config.inputs]
    resolved = [d.resolve() for d in dirs]
    dup = sorted({str(d) for d in dirs if resolved.count(d.resolve()) > 1})
    if dup:
        raise ConfigError(f"The same evaluation is given twice: {', '.join(dup)}.", "Pass each evaluation once.")
    loaded = [_load(d) for d in dirs]
    summaries = [s for s, _ in loaded]
    _check_same_episodes(dirs, summaries, config.metric)
    labels = _labels(summaries)
    classes = tuple(summaries[0].get("classes") or [])

    series = []
    for (summary, table), label, d in zip(loaded, labels, dirs, strict=True):
        values = episode_means(table, config.metric)
        per_class, overall = aggregate(table, classes)
        series.append((label, summary, d, values, per_class, overall))
    n_eps = {len(v) for _, _, _, v, _, _ in series}
    if len(n_eps) != 1:
        raise DataError("The evaluations hold different numbers of episodes despite one episode list.", "Re-run them.")

    def key(item: Any) -> float:
        mean = item[5][config.metric]["mean"]
        return -mean if mean is not None and math.isfinite(mean) else math.inf

    series.sort(key=key)
    best_values = series[0][3]
    rows = []
    for rank, (label, summary, d, values, per_class, overall) in enumerate(series, start=1):
        if rank == 1:
            diff = None
        else:
            aligned = values.reindex(best_values.index)
            diff = paired_difference(aligned.to_numpy(dtype=float), best_values.to_numpy(dtype=float))
        est = overall[config.metric]
        rows.append(
            CompareRow(
                rank=rank,
                name=label,
                method=str(summary.get("method")),
                kind=summary.get("kind"),
                eval_dir=d,
                mean=_f(est["mean"]),
                ci95=_f(est["ci95"]),
                n_episodes=int(est["n"]),
                diff=None if diff is None else diff.mean,
                diff_ci95=None if diff is None else diff.ci95,
                p_value=None if diff is None else diff.p_value,
                significant=None if diff is None else bool(np.isfinite(diff.p_value) and diff.p_value < ALPHA),
                others={m: _f(overall[m]["mean"]) for m in METRICS},
                per_class={c: _mean_ci(v[config.metric]) for c, v in per_class.items()},
            )
        )
    result = CompareResult(
        metric=config.metric,
        episode_list_hash=str(summaries[0]["episode_list_hash"]),
        episodes=next(iter(n_eps)),
        classes=classes,
        rows=tuple(rows),
        verdict=verdict(rows, config.metric),
        output=Path(config.output) if config.output is not None else None,
    )
    if config.output is None:
        return result
    files = write_comparison(result, Path(config.output), overwrite=config.overwrite)
    return CompareResult(**{**result.__dict__, "files": tuple(files)})


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


def _mean_ci(estimate: dict[str, Any]) -> dict[str, float]:
    return {"mean": _f(estimate["mean"]), "ci95": _f(estimate["ci95"])}


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(rows: Sequence[CompareRow], metric: str) -> str:
    """One line: who is best, by how much over each other method (paired CI, p), and what is not significant."""
    name = metric.upper() if metric in ("auc", "ap") else metric
    best = rows[0]
    head = f"{best.name} is best: {name} {best.mean:.3f} ± {best.ci95:.3f}"
    if len(rows) == 1:
        return f"{head} over {best.n_episodes} episodes (nothing to compare it with)."
    parts = []
    for row in rows[1:]:
        d, ci = -(row.diff or 0.0), row.diff_ci95 if row.diff_ci95 is not None else math.nan
        sig = "" if row.significant else ", not significant"
        parts.append(f"{d:+.3f} [{d - ci:+.3f}, {d + ci:+.3f}] over {row.name} ({_p(row.p_value)}{sig})")
    runner = rows[1]
    if not runner.significant:
        head = (
            f"{best.name} ranks first ({name} {best.mean:.3f} ± {best.ci95:.3f}) but is not significantly better "
            f"than {runner.name}"
        )
    return f"{head}: " + "; ".join(parts) + "."


# --- files ------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def comparison_table(result: CompareResult) -> Any:
    """The ranking as a DataFrame (the rows of ``comparison.csv``)."""
    import pandas as pd

    records = []
    for row in result.rows:
        ci = row.diff_ci95
        records.append(
            {
                "rank": row.rank,
                "name": row.name,
                "method": row.method,
                "kind": row.kind or "",
                "eval_dir": str(row.eval_dir),
                "metric": result.metric,
                "mean": row.mean,
                "ci95": row.ci95,
                "low": row.mean - row.ci95,
                "high": row.mean + row.ci95,
                "episodes": row.n_episodes,
                "diff_vs_best": row.diff,
                "diff_ci95": ci,
                "diff_low": None if row.diff is None or ci is None else row.diff - ci,
                "diff_high": None if row.diff is None or ci is None else row.diff + ci,
                "p_value": row.p_value,
                "significant": row.significant,
                **{f"{m}_mean": v for m, v in row.others.items()},
                **{f"{c}_{result.metric}": v["mean"] for c, v in row.per_class.items()},
            }
        )
    return pd.DataFrame.from_records(records)


def comparison_markdown(result: CompareResult) -> str:
    """``comparison.md``: the ranked table, per-class means and the verdict."""
    name = result.metric.upper() if result.metric in ("auc", "ap") else result.metric
    lines = [
        f"# Comparison on {result.episodes} episodes (episode list {result.episode_list_hash})",
        "",
        f"| rank | method | {name} (mean ± 95% CI) | Δ vs best [95% CI] | p | " + " | ".join(result.classes) + " |",
        "|---:|---|---:|---:|---:|" + "---:|" * len(result.classes),
    ]
    for row in result.rows:
        if row.diff is None:
            diff, p = "—", "—"
        else:
            ci = row.diff_ci95 if row.diff_ci95 is not None else math.nan
            diff = f"{row.diff:+.3f} [{row.diff - ci:+.3f}, {row.diff + ci:+.3f}]"
            p = _p(row.p_value).removeprefix("p = ").removeprefix("p ")
        per = [
            f"{_fmt(row.per_class[c]['mean'])} ± {_fmt(row.per_class[c]['ci95'])}" if c in row.per_class else ""
            for c in result.classes
        ]
        lines.append(
            f"| {row.rank} | {row.name} | {_fmt(row.mean)} ± {_fmt(row.ci95)} | {diff} | {p} | "
            + " | ".join(per)
            + " |"
        )
    lines += ["", f"**Verdict:** {result.verdict}", ""]
    return "\n".join(lines)


def write_comparison(result: CompareResult, out: Path, *, overwrite: bool) -> list[Path]:
    """Write comparison.{csv,md,png,json} into ``out``; an existing comparison needs ``overwrite``."""
    from cxr_tools.config import to_json
    from cxr_tools.eval.plots import plot_grouped_bars
    from cxr_tools.eval.report import write_table
    from cxr_tools.runtime.fs import atomic_write_text

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory.", "Choose another -o.")
    if (out / COMPARISON_FILES[0]).exists() and not overwrite:
        raise OutputExistsError(f"{out} already holds a comparison.", "Pass --overwrite, or choose another -o.")
    out.mkdir(parents=True, exist_ok=True)
    name = result.metric.upper() if result.metric in ("auc", "ap") else result.metric
    groups = [*result.classes, "overall"]
    series = {}
    for row in result.rows:
        means = [row.per_class.get(c, {}).get("mean", math.nan) for c in result.classes] + [row.mean]
        cis = [row.per_class.get(c, {}).get("ci95", math.nan) for c in result.classes] + [row.ci95]
        series[row.name] = (means, cis)
    return [
        write_table(out / "comparison.csv", comparison_table(result)),
        atomic_write_text(out / "comparison.md", comparison_markdown(result)),
        plot_grouped_bars(
            out / "comparison.png",
            groups,
            series,
            metric=name,
            chance=0.5 if result.metric == "auc" else None,
            title=f"{name} per class, {result.episodes} shared episodes ({result.episode_list_hash})",
        ),
        atomic_write_text(out / "comparison.json", to_json(result) + "\n"),
    ]
