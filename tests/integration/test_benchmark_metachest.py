"""The MetaChest comparison plan (examples/benchmark/metachest-phantoms.yaml: transfer learning against
ProtoNet-ML) runs end to end with the local executor on a tiny cache: ProtoNet-ML is meta-trained once and scored
with its prototype rule, transfer fine-tunes a fresh head with MetaChest's budget, and the report has both rows;
its generalized grid (seen + unseen classes) reports seen / unseen / harmonic AUC columns whose numbers are
compare's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from benchmark_fixtures import assert_report_equals_comparisons, cxr, status
from evaluate_factory import make_eval_cache

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "benchmark" / "metachest-phantoms.yaml"


def test_the_metachest_phantom_plan_runs_and_reports_both_methods(tmp_path):
    plan = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    # the example's settings, scaled to a 200-image cache: one shot count, fewer queries and episodes, one thread,
    # two training steps (what is checked is the methods' own budgets: transfer's fine-tuning, ProtoNet-ML's shots)
    plan.update(cache=str(make_eval_cache(tmp_path)), output=str(tmp_path / "out"), shots=[2], queries=3)
    plan.update(episodes=4, threads=1, shapes=[[2, 0]])  # the standard shape; the grid: the test below
    plan["train"].update(epochs=1, max_steps=2)
    plan["methods"]["protonet"]["train_shots"] = 2
    plan["meta_train"].update(episodes=4)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")

    run = cxr("benchmark", "run", str(path), timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    steps = status(path)
    assert {s["status"] for s in steps.values()} == {"done"}
    assert [i for i in steps if i.startswith("meta-train/")] == ["meta-train/protonet-conv4-tiny-2shot-seed0"]
    out = tmp_path / "out" / "evaluations"
    proto = json.loads((out / "2shot" / "protonet" / "seed0" / "summary.json").read_text())["settings"]
    assert proto["method"] == "prototype" and proto["rule"] == "mean-distance"
    transfer = json.loads((out / "2shot" / "transfer" / "seed0" / "summary.json").read_text())["settings"]
    assert (transfer["method"], transfer["mode"], transfer["steps"], transfer["lr"]) == ("finetune", "head", 100, 0.005)
    report = cxr("benchmark", "report", str(path), "-o", str(tmp_path / "report"), "--json")
    assert report.returncode == 0, report.stderr[-2000:]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["methods"] == ["transfer", "protonet"]


def test_the_phantom_metachest_grid_runs_and_reports_seen_unseen_and_harmonic(tmp_path):
    plan = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
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
    plan["methods"] = {"transfer": {"evaluate": {"steps": 5}}, "pixels": {}}  # no meta-training: CI stays fast
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
    assert {c["method"] for c in generalized} == {"transfer", "pixels"}
    for cell in generalized:
        row = next(r for r in comparison["rows"] if any(f"/{cell['method']}" in d for d in r["eval_dirs"]))
        assert (cell["seen"], cell["unseen"]) == (row["others"]["auc-seen"], row["others"]["auc-unseen"])
    markdown = (out / "report.md").read_text()
    assert "2-way + 2 seen, 2-shot" in markdown and "seen / unseen / harmonic mean AUC" in markdown
    assert Path(report["cells"][0]["comparison"]).is_file()
