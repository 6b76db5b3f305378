"""The Results tab: an evaluation (``cxr evaluate``) or comparison (``cxr compare``) directory as the page shows it.

Nothing is recomputed: an evaluation's ``summary.json`` gives the table (mean, 95% interval and its kind per
metric, overall and per class) and ``plots/*.png`` the ROC and per-class plots :mod:`cxr_tools.eval.plots` drew;
a comparison's ``comparison.md`` is the ranked table with intervals and every paired difference, exactly as
``cxr compare`` wrote it, with its ``comparison.png``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_tools.errors import InputError

#: Directories listed in the page's picker at most.
MAX_LISTED = 200


@dataclass(frozen=True)
class ResultsView:
    """What the tab shows for one directory: a title, Markdown tables and ``(png, caption)`` plots."""

    kind: str
    title: str
    markdown: str
    plots: list[tuple[str, str]]


def find_results(roots: list[Path], depth: int = 4, max_dirs: int = 5000) -> list[Path]:
    """Evaluation and comparison directories under ``roots``, at most ``depth`` levels down, sorted.

    The walk is bounded (``max_dirs`` folders in all, hidden ones skipped) so a root above a dataset of a
    hundred thousand files still starts the page at once; ``cxr app --results`` names a folder explicitly.
    """
    found: set[Path] = set()
    visited = 0
    for root in roots:
        root = Path(root)
        base = len(root.parts)
        for folder, dirs, files in os.walk(root):
            visited += 1
            if "summary.json" in files or "comparison.json" in files:
                found.add(Path(folder).resolve())
            dirs[:] = [] if len(Path(folder).parts) - base >= depth else sorted(d for d in dirs if d[0] != ".")
            if visited >= max_dirs or len(found) >= MAX_LISTED:
                return sorted(found)
    return sorted(found)


def load_results(path: str | Path) -> ResultsView:
    """The view of an evaluation or comparison directory.

    Raises:
        InputError: the path is neither.
    """
    folder = Path(str(path)).expanduser()
    if (folder / "comparison.json").is_file():
        return _comparison(folder)
    if (folder / "summary.json").is_file():
        return _evaluation(folder)
    if (folder / "eval" / "summary.json").is_file():
        return _evaluation(folder / "eval")
    raise InputError(
        f"{folder} is not an evaluation or comparison directory.",
        "Pick a folder `cxr evaluate` (summary.json) or `cxr compare` (comparison.json) wrote.",
    )


def _comparison(folder: Path) -> ResultsView:
    data = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    md_path = folder / "comparison.md"
    markdown = md_path.read_text(encoding="utf-8") if md_path.is_file() else _comparison_table(data)
    plots = [(str(p), p.stem) for p in sorted(folder.glob("*.png"))]
    title = f"Comparison of {len(data.get('rows') or [])} methods on {data.get('episodes')} shared episodes"
    return ResultsView("comparison", title, markdown, plots)


def _comparison_table(data: dict[str, Any]) -> str:
    """A minimal table when comparison.md is missing: rank, method, mean [low, high], difference and p."""
    lines = ["| rank | method | mean [95% CI] | Δ [95% CI] | p |", "|---:|---|---:|---:|---:|"]
    for row in data.get("rows") or []:
        diff, low, high = row.get("diff"), row.get("diff_low"), row.get("diff_high")
        if diff is None:
            delta = "—"
        elif low is None or high is None:
            delta = f"{diff:+.3f}"
        else:
            delta = f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]"
        p = "—" if row.get("p_value") is None else f"{row['p_value']:.3g}"
        lines.append(f"| {row.get('rank')} | {row.get('name')} | {_interval(row)} | {delta} | {p} |")
    return "\n".join(lines)


def _evaluation(folder: Path) -> ResultsView:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    overall: dict[str, Any] = summary.get("overall") or {}
    metrics = [m for m in overall if isinstance(overall[m], dict)]
    lines = [
        f"**{summary.get('name', folder.name)}** · {summary.get('episodes')} episodes of {summary.get('ways')}-way "
        f"{summary.get('shots')}-shot · classes {', '.join(summary.get('classes') or [])}",
        "",
        "| metric | mean | 95% interval | interval kind | n |",
        "|---|---:|---:|---|---:|",
    ]
    for m in metrics:
        est = overall[m]
        lines.append(
            f"| {m} | {_num(est.get('mean'))} | [{_num(est.get('low'))}, {_num(est.get('high'))}] | "
            f"{est.get('interval', 'episode')} | {est.get('n', '')} |"
        )
    per_class: dict[str, Any] = summary.get("per_class") or {}
    if per_class and metrics:
        lines += ["", "Per class (mean [95% interval]):", "", "| class | " + " | ".join(metrics) + " |"]
        lines.append("|---|" + "---:|" * len(metrics))
        for cls, values in per_class.items():
            cells = [_interval(values.get(m) or {}) for m in metrics]
            lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    plots = [(str(p), p.stem) for p in sorted((folder / "plots").glob("*.png"))]
    return ResultsView("evaluation", f"Evaluation {folder}", "\n".join(lines), plots)


def _interval(est: dict[str, Any]) -> str:
    if est.get("mean") is None:
        return "—"
    return f"{_num(est.get('mean'))} [{_num(est.get('low'))}, {_num(est.get('high'))}]"


def _num(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"
