"""``cxr benchmark run --executor slurm`` on the local one-node SLURM cluster: dependent jobs, arrays for alike
steps, states written by the jobs, a rerun that submits nothing, and a report equal to compare's outputs."""

from __future__ import annotations

import json
import time

import pytest
from benchmark_fixtures import assert_report_equals_comparisons, cxr, state, status, write_plan
from evaluate_factory import make_eval_cache
from slurm_cluster import require_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_slurm_executor_runs_the_plan_as_dependent_jobs_and_a_rerun_submits_nothing(tmp_path):
    require_slurm()
    cache, output = make_eval_cache(tmp_path), tmp_path / "out"
    plan = write_plan(tmp_path / "plan.yaml", cache, output, seeds=1, slurm={"cpus_per_task": 1, "time": "00:10:00"})
    res = cxr("benchmark", "run", str(plan), "--executor", "slurm", "--json")
    assert res.returncode == 0, res.stderr
    jobs = json.loads(res.stdout)["jobs"]
    assert sorted(len(steps) for steps in jobs.values()) == [1, 1, 1, 2, 2]  # pixels and linear-probe: arrays
    # the jobs write their states; `cxr benchmark status` (a process, and the queue's view: a job that left the
    # queue without a final state is failed) is asked every 10 s and once the files say every step ended
    deadline = time.monotonic() + 420
    st, asked = status(plan), time.monotonic()
    while True:
        failed = {i: (s["reason"], s["log"]) for i, s in st.items() if s["status"] == "failed"}
        assert not failed, failed
        if all(s["status"] == "done" for s in st.values()):
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.5)
        ended = all(state(output, i).get("status") in ("done", "failed") for i in st)
        if ended or time.monotonic() - asked >= 10:
            st, asked = status(plan), time.monotonic()
    assert st["evaluate/2shot/linear-probe/seed0"]["job_id"].endswith("_1")  # the second task of its array
    again = cxr("benchmark", "run", str(plan), "--executor", "slurm", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["jobs"] == {} and len(json.loads(again.stdout)["skipped"]) == 7
    report = cxr("benchmark", "report", str(plan), "-o", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert_report_equals_comparisons(tmp_path / "report")
