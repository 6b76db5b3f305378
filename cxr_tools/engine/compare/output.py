"""What ``cxr compare`` says and writes: the verdict line, comparison.csv / .md / .png / .json.

Every p-value shown is Holm-adjusted and printed by :func:`~cxr_tools.eval.metrics.format_p` (never "p = 0.0");
a leaking model (an evaluation made with ``--allow-leak``) is marked in every output, and the adaptation budget
is a column of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_tools.config import to_json
from cxr_tools.eval.metrics import format_p
from cxr_tools.eval.plots import plot_grouped_bars
from cxr_tools.eval.report import write_table
from cxr_tools.runtime.fs import atomic_write_text
from cxr_tools.runtime.outputs import OutputSpec, claim, decide, previous_release

LEAK_MARK = "⚠ LEAK"
COMPARISON_FILES: tuple[str, ...] = ("comparison.csv", "comparison.md", "comparison.png", "comparison.json")
#: The output spec of a comparison: complete once its table is written; an unfinished one is written again. A
#: comparison of the previous release (no marker) is recognised by its comparison.json.
COMPARISON_SPEC = OutputSpec(
    command="compare",
    what="comparison",
    complete=lambda p: (p / "comparison.csv").exists(),
    restart=True,
    recognise=previous_release("comparison"),
)


def metric_name(metric: str, rule: str | None = None) -> str:
    """``AUC``, ``AP``; a thresholded metric names its threshold rule when given (``f1@support``); a generalized
    part follows it (``AUC seen``, ``AUC harmonic``)."""
    base, _, part = metric.rpartition("-")
    if base and part in ("seen", "unseen", "harmonic"):
        return f"{metric_name(base, rule)} {part}"
    if metric in ("auc", "ap"):
        return metric.upper()
    name = "F1" if metric == "f1" else metric
    return f"{name}@{rule}" if rule else name


def metric_columns(result: Any) -> list[tuple[str, str]]:
    """``(metric, header)`` of every metric the comparison shows, the threshold-free ones (AUC, AP) first."""
    shown = list(result.rows[0].others) if result.rows else []
    return [(m, metric_name(m, getattr(result, "threshold", None))) for m in shown]


def rule_note(result: Any) -> str:
    """What the thresholded columns mean, or why they are absent."""
    rule = getattr(result, "threshold", None)
    if rule is None:
        return (
            "F1 / precision / recall left out: the evaluations used different threshold rules (or none), and "
            "they are never pooled across rules."
        )
    if rule == "support":
        return (
            "F1 / precision / recall @support: each episode's thresholds chosen per class on its support set "
            "(max F1 on the adapted support scores), never on the queries."
        )
    return f"F1 / precision / recall at the fixed threshold {rule}."


def all_positive(table: Any) -> dict[str, float]:
    """What calling every query positive scores, averaged like the methods (per episode over its classes, then
    over episodes): precision = prevalence p, recall 1, F1 = 2p / (1 + p); a method without skill lands near it."""
    p = table["positives"].to_numpy(float) / (table["positives"] + table["negatives"]).to_numpy(float)
    frame = table[["episode"]].assign(f1=2 * p / (1 + p), precision=p, recall=1.0)
    return {m: float(frame.groupby("episode")[m].mean().mean()) for m in ("f1", "precision", "recall")}


def p_cell(p: float | None, note: str = "") -> str:
    """``0.042``, ``< 0.001``, ``1 (identical on every episode)``, ``n/a``."""
    text = format_p(p).removeprefix("p = ").removeprefix("p ")
    return f"{text} ({note})" if note else text


def verdict(rows: Sequence[Any], metric: str, reference: str, explicit_reference: bool, rule: str | None = None) -> str:
    """One line: who ranks first, each difference against the reference (paired CI, Holm-adjusted p), and
    whether it is significant."""
    name = metric_name(metric, rule)
    best = rows[0]
    if len(rows) == 1:
        return (
            f"{best.name} is the only method: {name} {interval_text(best.mean, best.low, best.high)} over "
            f"{best.n_episodes} episodes."
        )
    others = [r for r in rows if r.name != reference]
    parts = []
    for row in others:
        sig = "" if row.significant else ", not significant"
        note = f", {row.note}" if row.note else ""
        parts.append(
            f"{row.name} {diff_text(row.diff, row.diff_low, row.diff_high)} ({format_p(row.p_value)} Holm{sig}{note})"
        )
    ref = next(r for r in rows if r.name == reference)
    if explicit_reference:
        head = f"Against {reference} ({name} {interval_text(ref.mean, ref.low, ref.high)})"
    elif not rows[1].significant:
        head = (
            f"{best.name} ranks first ({name} {interval_text(best.mean, best.low, best.high)}) but is not "
            f"significantly better than {rows[1].name}"
        )
    else:
        head = f"{best.name} is best: {name} {interval_text(best.mean, best.low, best.high)}; against it"
    leaks = [r.name for r in rows if r.leak]
    tail = f" LEAK: {', '.join(leaks)} trained on meta-test classes or patients." if leaks else ""
    return f"{head}: " + "; ".join(parts) + "." + tail


def interval_text(mean: float | None, low: float | None, high: float | None, *, signed: bool = False) -> str:
    """``0.531 [0.452, 0.610]``: an estimate and its 95% interval (never a symmetric ±); ``signed`` for
    differences (``+0.012 [-0.030, +0.054]``)."""
    spec = "+.3f" if signed else ".3f"
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"


def diff_text(diff: float | None, low: float | None, high: float | None) -> str:
    """A paired difference and its 95% interval: :func:`interval_text` with signs."""
    return interval_text(diff, low, high, signed=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def comparison_table(result: Any) -> Any:
    """The ranking as a DataFrame (the rows of ``comparison.csv``)."""

    records = []
    for row in result.rows:
        ci = row.diff_ci95
        records.append(
            {
                "rank": row.rank,
                "name": row.name,
                "method": row.method,
                "kind": row.kind or "",
                "eval_dir": ";".join(str(d) for d in row.eval_dirs),
                "seeds": len(row.eval_dirs),
                "metric": result.metric,
                "mean": row.mean,
                "ci95": row.ci95,
                "low": row.low,
                "high": row.high,
                "interval": row.interval,
                "episodes": row.n_episodes,
                "patients": row.patients,
                "reference": result.reference,
                "diff_vs_reference": row.diff,
                "diff_ci95": ci,
                "diff_low": row.diff_low,
                "diff_high": row.diff_high,
                "p_value": row.p_value,
                "p_raw": row.p_raw,
                "significant": row.significant,
                "note": row.note,
                "leak": row.leak or "",
                "budget": row.budget,
                "threshold": result.threshold or "",
                **{f"{m}_mean": v for m, v in row.others.items()},
                **{f"{c}_{result.metric}": v["mean"] for c, v in row.per_class.items()},
                **{f"{c}_p_value": v["p_value"] for c, v in row.per_class.items()},
            }
        )
    return pd.DataFrame.from_records(records)


def comparison_markdown(result: Any) -> str:
    """``comparison.md``: the ranked table, per-class means (with Holm-adjusted per-class p), tests, verdict."""
    name = metric_name(result.metric, result.threshold)
    lines = [
        f"# Comparison on {result.episodes} episodes (episode list {result.episode_list_hash})",
        "",
        f"Δ = method − {result.reference}, paired over episodes (seed-averaged); Δ intervals per comparison (they "
        f"exclude 0 exactly when the raw p < 0.05); p Holm-adjusted over one family of {len(result.tests)} tests "
        "(every test below, overall and per class). Intervals and tests: one variance model (episodes, support and "
        f"query patients — {result.patients} distinct — and, for seed groups, training seeds; docs/science.md).",
        *(f"Note: {n}." for n in getattr(result, "notes", ())),
        "",
        f"| rank | method | seeds | budget | {name} [95% CI] | Δ [95% CI] | p | leak | "
        + " | ".join(result.classes)
        + " |",
        "|---:|---|---:|---|---:|---:|---:|---|" + "---:|" * len(result.classes),
    ]
    for row in result.rows:
        if row.diff is None:
            diff, p = "—", "—"
        else:
            diff = diff_text(row.diff, row.diff_low, row.diff_high)
            p = p_cell(row.p_value, row.note)
        per = []
        for c in result.classes:
            v = row.per_class.get(c)
            cell = interval_text(v["mean"], v.get("low"), v.get("high")) if v else ""
            if v and v.get("p_value") is not None:
                cell += f" (p {p_cell(v['p_value'])})"
            per.append(cell)
        lines.append(
            f"| {row.rank} | {row.name} | {len(row.eval_dirs)} | {row.budget} | "
            f"{interval_text(row.mean, row.low, row.high)} "
            f"| {diff} | {p} | {LEAK_MARK + ': ' + row.leak if row.leak else ''} | " + " | ".join(per) + " |"
        )
    columns = metric_columns(result)
    lines += ["", "## All metrics (mean over episodes)", "", "| method | " + " | ".join(h for _, h in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for row in result.rows:
        lines.append(f"| {row.name} | " + " | ".join(_fmt(row.others.get(m)) for m, _ in columns) + " |")
    if result.all_positive:
        cells = [_fmt(result.all_positive.get(m)) if m in result.all_positive else "—" for m, _ in columns]
        lines.append("| *every query called positive* | " + " | ".join(cells) + " |")
    lines += ["", rule_note(result)]
    lines += ["", "## All paired tests (one Holm family)", "", "| scope | a − b | Δ [95% CI] | p (raw) | p (Holm) |"]
    lines.append("|---|---|---:|---:|---:|")
    for t in result.tests:
        lines.append(
            f"| {t.scope} | {t.a} − {t.b} | {diff_text(t.diff, t.low, t.high)} | {p_cell(t.p_raw)} | "
            f"{p_cell(t.p_value, t.note)} |"
        )
    lines += ["", f"**Verdict:** {result.verdict}", ""]
    return "\n".join(lines)


def write_comparison(result: Any, out: Path, *, overwrite: bool) -> list[Path]:
    """Write comparison.{csv,md,png,json} into ``out`` under the one output policy
    (:data:`COMPARISON_SPEC`): an existing comparison needs ``overwrite``, which removes only what cxr recorded
    writing there; a folder that is not a cxr comparison is refused (nothing there is deleted)."""

    claim(decide(out, COMPARISON_SPEC, overwrite=overwrite))
    name = metric_name(result.metric, result.threshold)
    groups = [*result.classes, "overall"]
    series = {}
    for row in result.rows:
        means = [row.per_class.get(c, {}).get("mean", math.nan) for c in result.classes] + [row.mean]
        cis = [row.per_class.get(c, {}).get("ci95", math.nan) for c in result.classes] + [row.ci95]
        series[f"{row.name} ({LEAK_MARK})" if row.leak else row.name] = (means, cis)
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
