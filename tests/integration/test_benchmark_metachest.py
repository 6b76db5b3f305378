"""``examples/benchmark/metachest-phantoms.yaml`` end to end in CI: the shipped plan, pointed at a tiny cache with
the smallest budgets, runs its generalized grid (real ``cxr`` commands) and reports seen / unseen / harmonic AUC
columns whose numbers are compare's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from benchmark_fixtures import REPO, assert_report_equals_comparisons, cxr
from evaluate_factory import make_eval_cache

pytestmark = pytest.mark.slow


def test_the_phantom_metachest_grid_runs_and_reports_seen_unseen_and_harmonic(tmp_path):
    plan = yaml.safe_load((REPO / "examples" / "benchmark" / "metachest-phantoms.yaml").read_text(encoding="utf-8"))
    assert [1, 1] in plan["shapes"] and [2, 2] in plan["shapes"]
    cache, output = make_eval_cache(tmp_path, n=300), tmp_path / "out"
    plan.update(
        cache=str(cache),
        output=str(output),
        shapes=[[2, 0], [2, 2]],  # the shipped plan's standard and 2 + 2 shapes: two columns keep CI fast
        shots=[2],
        queries=3,
        episodes=4,
        threads=1,
        train={"epochs": 1, "max_steps": 2, "batch_size": 16},
        evaluate={"plots": False},
    )
    plan["methods"]["transfer-learning"]["evaluate"] = {"steps": 5}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")

    run = cxr("benchmark", "run", str(path))
    assert run.returncode == 0, run.stderr
    summary = json.loads((output / "evaluations" / "2way-2seen-2shot" / "pixels" / "summary.json").read_text())
    assert summary["seen_ways"] == 2 and summary["ways"] == 2 and summary["generalized"]["harmonic"]["auc"]
    comparison = json.loads((output / "compare" / "2way-2seen-2shot" / "comparison.json").read_text())
    assert comparison["metric"] == "auc-harmonic"

    out = tmp_path / "report"
    res = cxr("benchmark", "report", str(path), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert_report_equals_comparisons(out)
    report = json.loads((out / "report.json").read_text())
    assert report["columns"] == ["2way-2shot", "2way-2seen-2shot"]
    generalized = [c for c in report["cells"] if c["column"] == "2way-2seen-2shot"]
    assert {c["method"] for c in generalized} == {"transfer-learning", "pixels"}
    for cell in generalized:
        row = next(r for r in comparison["rows"] if any(f"/{cell['method']}" in d for d in r["eval_dirs"]))
        assert (cell["seen"], cell["unseen"]) == (row["others"]["auc-seen"], row["others"]["auc-unseen"])
    markdown = (out / "report.md").read_text()
    assert "2-way + 2 seen, 2-shot" in markdown and "seen / unseen / harmonic mean AUC" in markdown
    assert Path(report["cells"][0]["comparison"]).is_file()
