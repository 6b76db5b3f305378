"""The benchmark report: the paper's table and figures, read from the ``cxr compare`` output of each column (a shot
count, or a shot count of one episode shape in a grid plan such as ``metachest.yaml``).

No statistic is computed here. Every number is a field of ``compare/Kshot/comparison.json``: a method's mean
AUC with compare's seed-aware interval (a method trained with several seeds is one ``--group``, so its interval
includes the between-seed variance), its paired difference from the reference method with the Holm-adjusted
p-value, its mean AP, its per-class AUCs, and compare's paired tests. Rows are matched to the plan's methods by
their evaluation directories, never by display name. Written: ``report.md``, ``report.csv``, ``report.json``,
``report.html`` (self-contained, images inlined), ``auc_vs_shots.png`` (interval bands) and ``per_class_auc.png``
(a heat map per column). A column of generalized episodes (``seen_ways``) reports compare's ``auc-harmonic`` (the
harmonic mean of seen and unseen AUC, with its interval) as its AUC, and the seen and unseen means beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tools.benchmark.steps import Step
from cxr_tools.errors import InputError
from cxr_tools.runtime.outputs import OutputSpec, previous_release

REPORT_FILES = ("report.md", "report.csv", "report.json", "report.html", "auc_vs_shots.png", "per_class_auc.png")
#: The output spec of a benchmark report: complete once report.json is written; an unfinished one is written again.
#: A report of the previous release (no marker) is recognised by its report.json.
REPORT_SPEC = OutputSpec(
    command="benchmark report",
    what="benchmark report",
    complete=lambda p: (p / "report.json").exists(),
    restart=True,
    recognise=previous_release("benchmark report"),
)


@dataclass(frozen=True)
class Cell:
    """One method in one column (a shot count, of one episode shape in a grid), as compare reported it; for
    generalized episodes ``auc`` is the harmonic mean of ``seen`` and ``unseen`` AUC."""

    method: str
    shots: int
    auc: float
    ci95: float
    low: float
    high: float
    interval: str
    ap: float | None
    seeds: int
    diff: float | None
    p_value: float | None
    significant: bool | None
    best: bool
    per_class: dict[str, float]
    comparison: str
    column: str = ""
    seen: float | None = None
    unseen: float | None = None


@dataclass(frozen=True)
class Report:
    """The table (``cells``), the paired tests against the reference, and what is missing."""

    methods: tuple[str, ...]
    shots: tuple[int, ...]
    reference: str
    classes: tuple[str, ...]
    cells: tuple[Cell, ...]
    tests: tuple[dict[str, Any], ...]
    episodes: dict[str, int]
    missing: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    output: Path | None = None
    files: tuple[Path, ...] = field(default_factory=tuple)


def build_report(steps: Sequence[Step], reference: str) -> Report:
    """The report of every column whose comparison is finished (the others are listed in ``missing``)."""
    label_of = {str(Path(s.output).resolve()): s.method for s in steps if s.command == "evaluate"}
    methods = list(dict.fromkeys(s.method for s in steps if s.command == "evaluate" and s.method))
    compares = [s for s in steps if s.command == "compare"]
    if all(s.column is None for s in compares):  # steps of an older plan expansion: one column per shot count
        compares.sort(key=lambda s: s.shots or 0)
    cells: list[Cell] = []
    tests: list[dict[str, Any]] = []
    episodes: dict[str, int] = {}
    missing: list[str] = []
    classes: list[str] = []
    shots: list[int] = []
    ref_label = next((m for m in methods if m == reference or m.startswith(f"{reference}-")), reference)
    for step in compares:
        path, k = Path(step.output) / "comparison.json", int(step.shots or 0)
        column = step.column or f"{k}shot"
        if not path.is_file():
            missing.append(column)
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        episodes[column] = int(data["episodes"])
        shots += [k] if k not in shots else []
        classes += [c for c in data.get("classes", []) if c not in classes]
        names: dict[str, str] = {}
        shot_cells = []
        for row in data["rows"]:
            label = label_of.get(str(Path(row["eval_dirs"][0]).resolve()), row["name"])
            names[row["name"]] = label
            others = row.get("others") or {}
            shot_cells.append(
                Cell(
                    method=label,
                    shots=k,
                    auc=row["mean"],
                    ci95=row["ci95"],
                    low=row["low"],
                    high=row["high"],
                    interval=row["interval"],
                    ap=others.get("ap"),
                    seeds=len(row["eval_dirs"]),
                    diff=row.get("diff"),
                    p_value=row.get("p_value"),
                    significant=row.get("significant"),
                    best=False,
                    per_class={c: v.get("mean") for c, v in (row.get("per_class") or {}).items()},
                    comparison=str(path),
                    column=column,
                    seen=others.get("auc-seen"),
                    unseen=others.get("auc-unseen"),
                )
            )
        top = max((c.auc for c in shot_cells if _finite(c.auc)), default=math.nan)
        cells += [Cell(**{**c.__dict__, "best": c.auc == top}) for c in shot_cells]
        for t in data.get("tests", []):
            if t["scope"] == "overall":
                tests.append(
                    {
                        "shots": k,
                        "column": column,
                        "a": names.get(t["a"], t["a"]),
                        "b": names.get(t["b"], t["b"]),
                        **{key: t[key] for key in ("diff", "ci95", "n", "p_raw", "p_value", "significant", "note")},
                        "low": t.get("low", t["diff"] - t["ci95"]),
                        "high": t.get("high", t["diff"] + t["ci95"]),
                    }
                )
    if not cells:
        raise InputError(
            "No comparison of this benchmark is finished yet.",
            "Run `cxr benchmark run PLAN` (and `cxr benchmark status PLAN` to see what is left).",
        )
    return Report(
        tuple(methods),
        tuple(sorted(shots)),
        ref_label,
        tuple(classes),
        tuple(cells),
        tuple(tests),
        episodes,
        tuple(missing),
        tuple(episodes),
    )


def column_title(column: str) -> str:
    """``5shot`` -> ``5-shot``; ``3way-2seen-5shot`` -> ``3-way + 2 seen, 5-shot`` (a grid plan's column)."""
    parts = column.split("-")
    shots = parts[-1].replace("shot", "-shot")
    shape = [p.replace("way", "-way") if p.endswith("way") else p.replace("seen", " seen") for p in parts[:-1]]
    return (" + ".join(shape) + ", " if shape else "") + shots


def table_rows(report: Report) -> list[dict[str, Any]]:
    """One record per (method, shots): the rows of ``report.csv``."""
    return [
        {
            "method": c.method,
            "column": c.column,
            "shots": c.shots,
            "auc": c.auc,
            "auc_seen": c.seen,
            "auc_unseen": c.unseen,
            "ci95": c.ci95,
            "low": c.low,
            "high": c.high,
            "interval": c.interval,
            "seeds": c.seeds,
            "ap": c.ap,
            "best": c.best,
            "reference": report.reference,
            "diff_vs_reference": c.diff,
            "p_holm": c.p_value,
            "significant": c.significant,
            **{f"{k}_auc": v for k, v in c.per_class.items()},
            "comparison": c.comparison,
        }
        for c in report.cells
    ]


def cell_text(c: Cell, reference: str) -> str:
    """``0.712 [0.690, 0.734]`` with ``*`` when significantly different from the reference (Holm)."""
    text = f"{c.auc:.3f} [{c.low:.3f}, {c.high:.3f}]"
    if c.method == reference:
        return text + " (ref)"
    return text + ("*" if c.significant else "")


def _generalized(report: Report) -> list[str]:
    """The columns of generalized episodes (their cells carry seen and unseen means)."""
    return [k for k in report.columns if any(c.column == k and c.seen is not None for c in report.cells)]


def markdown(report: Report, images: Sequence[str] = ()) -> str:
    by = {(c.method, c.column): c for c in report.cells}
    generalized = _generalized(report)
    lines = [
        "# Few-shot benchmark",
        "",
        f"Mean AUC [95% interval] per method and column; bold: best of the column; * differs from "
        f"{report.reference} (paired over the shared episodes, Holm-adjusted p < 0.05 over each column's "
        "family). Intervals and tests: one variance model (episodes, support and query patients, and the "
        "between-seed variance of methods trained with several seeds); a method trained with one seed speaks "
        "for that trained model, not the method. Episodes: "
        + ", ".join(f"{column_title(k)} {n}" for k, n in report.episodes.items())
        + "."
        + (
            " Columns with seen classes (generalized episodes) give the harmonic mean of the seen and unseen "
            "AUC, with its delta-method interval (docs/science.md)."
            if generalized
            else ""
        ),
        "",
        "| method | " + " | ".join(column_title(k) for k in report.columns) + " |",
        "|---|" + "---:|" * len(report.columns),
    ]
    for m in report.methods:
        cells = []
        for k in report.columns:
            c = by.get((m, k))
            cells.append(
                ""
                if c is None
                else (f"**{cell_text(c, report.reference)}**" if c.best else cell_text(c, report.reference))
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if report.missing:
        lines += ["", f"Not finished yet: {', '.join(column_title(k) for k in report.missing)}."]
    if generalized:
        lines += [
            "",
            "## Generalized episodes: seen / unseen / harmonic mean AUC",
            "",
            "| method | " + " | ".join(column_title(k) for k in generalized) + " |",
            "|---|" + "---:|" * len(generalized),
        ]
        for m in report.methods:
            parts = [by.get((m, k)) for k in generalized]
            lines.append(
                f"| {m} | "
                + " | ".join("" if c is None else f"{_f(c.seen)} / {_f(c.unseen)} / {_f(c.auc)}" for c in parts)
                + " |"
            )
    lines += [
        "",
        f"## Paired tests against {report.reference} (overall; Holm over each column's family)",
        "",
        "| column | method − reference | Δ AUC [95% CI] | p (raw) | p (Holm) | significant |",
        "|---|---|---:|---:|---:|---|",
    ]
    for t in report.tests:
        lines.append(
            f"| {_test_column(t)} | {t['a']} − {t['b']} | {t['diff']:+.3f} [{t['low']:+.3f}, "
            f"{t['high']:+.3f}] | {_p(t['p_raw'])} | {_p(t['p_value'])} | "
            f"{'yes' if t['significant'] else 'no'} |"
        )
    lines += [""] + [f"![{Path(i).stem}]({Path(i).name})" for i in images] + [""]
    return "\n".join(lines)


def write_report(report: Report, out: Path, *, overwrite: bool) -> Report:
    """Write the report files into ``out`` (:data:`REPORT_SPEC`: ``--overwrite`` removes only what cxr recorded
    writing there)."""
    import pandas as pd

    from cxr_tools.config import to_json
    from cxr_tools.runtime.fs import atomic_write_text
    from cxr_tools.runtime.outputs import claim, decide

    claim(decide(out, REPORT_SPEC, overwrite=overwrite))
    images = [_plot_shots(report, out / "auc_vs_shots.png"), _plot_classes(report, out / "per_class_auc.png")]
    frame = pd.DataFrame.from_records(table_rows(report))
    files = [
        atomic_write_text(out / "report.csv", frame.to_csv(index=False)),
        atomic_write_text(out / "report.md", markdown(report, [str(i) for i in images])),
        atomic_write_text(out / "report.html", _html(report, images)),
        *images,
    ]
    result = Report(**{**report.__dict__, "output": out, "files": tuple([*files, out / "report.json"])})
    atomic_write_text(out / "report.json", to_json(result) + "\n")
    return result


def _plot_shots(report: Report, path: Path) -> Path:
    from cxr_tools.eval.plots import new_figure, save_figure

    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    shapes = list(dict.fromkeys(_shape(c.column) for c in report.cells))
    for m in report.methods:
        for shape in shapes:  # one line per method and episode shape (a grid plan has several)
            cs = sorted(
                (c for c in report.cells if c.method == m and _shape(c.column) == shape),
                key=lambda c: c.shots,
            )
            if not cs:
                continue
            x = [c.shots for c in cs]
            label = f"{m} ({column_title(shape + '-0shot').rsplit(',', 1)[0]})" if shape else m
            (line,) = ax.plot(x, [c.auc for c in cs], marker="o", label=label)
            ax.fill_between(x, [c.low for c in cs], [c.high for c in cs], alpha=0.2, color=line.get_color())
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(list(report.shots))
    ax.set_xlabel("shots (K)")
    ax.set_ylabel("AUC (mean, 95% interval)")
    ax.set_title("AUC vs shots")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def _plot_classes(report: Report, path: Path) -> Path:
    import numpy as np

    from cxr_tools.eval.plots import new_figure, save_figure

    n, classes, methods = len(report.columns), list(report.classes), list(report.methods)
    fig = new_figure(max(4.0, 0.9 * len(classes) + 2.5) * n, 0.45 * len(methods) + 2.0)
    by = {(c.method, c.column): c for c in report.cells}
    for i, k in enumerate(report.columns):
        ax = fig.add_subplot(1, n, i + 1)
        grid = np.array(
            [[_num((by[(m, k)].per_class if (m, k) in by else {}).get(c)) for c in classes] for m in methods]
        )
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for r in range(len(methods)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    r,
                    "" if math.isnan(grid[r, j]) else f"{grid[r, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if grid[r, j] > 0.6 else "white",
                )
        ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(np.arange(len(methods)), methods if i == 0 else [""] * len(methods), fontsize=8)
        ax.set_title(f"{column_title(k)}: AUC per class", fontsize=9)
    fig.colorbar(image, ax=fig.axes, fraction=0.02, pad=0.02)
    return save_figure(fig, path)


def _html(report: Report, images: Sequence[Path]) -> str:
    by = {(c.method, c.column): c for c in report.cells}
    head = "".join(f"<th>{html.escape(column_title(k))}</th>" for k in report.columns)
    rows = []
    for m in report.methods:
        tds = []
        for k in report.columns:
            c = by.get((m, k))
            text = "" if c is None else html.escape(cell_text(c, report.reference))
            tds.append(f"<td><b>{text}</b></td>" if c is not None and c.best else f"<td>{text}</td>")
        rows.append(f"<tr><th>{html.escape(m)}</th>{''.join(tds)}</tr>")
    tests = "".join(
        f"<tr><td>{html.escape(_test_column(t))}</td><td>{html.escape(t['a'])} − {html.escape(t['b'])}</td>"
        f"<td>{t['diff']:+.3f} "
        f"[{t['low']:+.3f}, {t['high']:+.3f}]</td><td>{_p(t['p_value'])}</td>"
        f"<td>{'yes' if t['significant'] else 'no'}</td></tr>"
        for t in report.tests
    )
    imgs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{p.stem}</figcaption></figure>"
        for p in images
    )
    note = (
        f"Mean AUC [95% interval]; bold: best of the column; * differs from {html.escape(report.reference)} "
        "(paired, Holm-adjusted p &lt; 0.05)."
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxr benchmark</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body><h1>Few-shot benchmark</h1>"
        f"<p>{note}</p><table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
        f"<h2>Paired tests against {html.escape(report.reference)} (Holm)</h2><table><tr><th>column</th>"
        f"<th>pair</th><th>Δ AUC [95% CI]</th><th>p (Holm)</th><th>significant</th></tr>{tests}</table>"
        f"{imgs}</body></html>\n"
    )


def _p(p: float | None) -> str:
    from cxr_tools.eval.metrics import format_p

    return format_p(p).removeprefix("p = ").removeprefix("p ")


def _test_column(test: dict[str, Any]) -> str:
    """The column title of a paired test (reports of older versions name only the shot count)."""
    return column_title(test.get("column") or f"{test['shots']}shot")


def _shape(column: str) -> str:
    """The episode shape of a grid column (``3way-2seen-5shot`` -> ``3way-2seen``); ``""`` for ``5shot``."""
    return column.rsplit("-", 1)[0] if "-" in column else ""


def _f(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def _finite(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
