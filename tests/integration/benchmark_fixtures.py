"""Tiny benchmark plans on a tiny cache, and helpers to run ``cxr benchmark`` as a user would (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def write_plan(path: Path, cache: Path, output: Path, **changes: Any) -> Path:
    """Two methods (pixels, linear-probe) × two shot counts × two seeds, with the smallest budgets that run."""
    plan: dict[str, Any] = {
        "cache": str(cache),
        "output": str(output),
        "shots": [1, 2],
        "seeds": 2,
        "ways": 2,
        "queries": 3,
        "episodes": 4,
        "backbones": ["conv4-tiny"],
        "device": "cpu",
        "threads": 1,
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 16},
        "evaluate": {"bootstrap": 0, "plots": False},
        "methods": {"pixels": {}, "linear-probe": {}},
        "reference": "pixels",
    }
    plan.update(changes)
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def cxr(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxr_tools", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ},
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_tools", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def state(output: Path, step_id: str) -> dict[str, Any]:
    path = output / ".benchmark" / "steps" / f"{step_id}.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the runner exited before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status(plan: Path) -> dict[str, Any]:
    res = cxr("benchmark", "status", str(plan), "--json")
    assert res.returncode == 0, res.stderr
    return {s["id"]: s for s in json.loads(res.stdout)["steps"]}


def assert_report_equals_comparisons(report_dir: Path) -> None:
    """Every number of report.json is the number of the comparison.json it came from."""
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert report["cells"]
    for cell in report["cells"]:
        comparison = json.loads(Path(cell["comparison"]).read_text(encoding="utf-8"))
        rows = [r for r in comparison["rows"] if any(f"/{cell['method']}" in d for d in r["eval_dirs"])]
        assert len(rows) == 1, (cell["method"], [r["eval_dirs"] for r in comparison["rows"]])
        row = rows[0]
        assert (cell["auc"], cell["ci95"], cell["low"], cell["high"]) == (
            row["mean"],
            row["ci95"],
            row["low"],
            row["high"],
        )
        assert (cell["diff"], cell["p_value"], cell["significant"]) == (row["diff"], row["p_value"], row["significant"])
        assert cell["ap"] == row["others"]["ap"] and cell["seeds"] == len(row["eval_dirs"])
        assert cell["per_class"] == {c: v["mean"] for c, v in row["per_class"].items()}
    best = {}
    for cell in report["cells"]:
        best.setdefault(cell.get("column") or cell["shots"], []).append(cell)  # the best of each column
    for cells in best.values():
        assert [c["best"] for c in cells] == [c["auc"] == max(x["auc"] for x in cells) for c in cells]
