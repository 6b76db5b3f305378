"""The MetaChest comparison plan (examples/benchmark/metachest-phantoms.yaml: transfer learning against
ProtoNet-ML) runs end to end with the local executor on a tiny cache: ProtoNet-ML is meta-trained once and scored
with its prototype rule, transfer fine-tunes a fresh head with MetaChest's budget, and the report has both rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from benchmark_fixtures import cxr, status
from evaluate_factory import make_eval_cache

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "benchmark" / "metachest-phantoms.yaml"


def test_the_metachest_phantom_plan_runs_and_reports_both_methods(tmp_path):
    plan = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    # the example's settings, scaled to a 200-image cache: one shot count, fewer queries and episodes, one thread
    plan.update(cache=str(make_eval_cache(tmp_path)), output=str(tmp_path / "out"), shots=[2], queries=3)
    plan.update(episodes=6, threads=1)
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
