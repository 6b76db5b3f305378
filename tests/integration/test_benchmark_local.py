"""``cxr benchmark`` with the local executor, end to end on a tiny cache with the real commands: two methods ×
two shot counts × two seeds, interrupted mid-way (SIGTERM to the runner) and rerun, the report's numbers equal to
compare's, a plan change that redoes only what changed, and failing steps that do not stop independent ones."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from benchmark_fixtures import assert_report_equals_comparisons, cxr, start, state, status, wait_for, write_plan
from evaluate_factory import make_eval_cache

pytestmark = pytest.mark.slow
TRAIN0 = "train/supervised-conv4-tiny-seed0"
NEXT = "evaluate/1shot/linear-probe/seed0"  # the step after TRAIN0 in the plan's order


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A benchmark stopped by SIGTERM while its fourth step runs, then rerun to the end."""
    tmp = tmp_path_factory.mktemp("bench")
    cache, output = make_eval_cache(tmp), tmp / "out"
    plan = write_plan(tmp / "plan.yaml", cache, output)
    proc = start("benchmark", "run", str(plan))
    wait_for(lambda: state(output, TRAIN0).get("status") == "done", 240, f"{TRAIN0} to finish", proc)
    wait_for(lambda: state(output, NEXT).get("status") == "running", 60, f"{NEXT} to start", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    after_kill = status(plan)
    pixels_summary = output / "evaluations" / "1shot" / "pixels" / "summary.json"
    stamp = pixels_summary.stat().st_mtime_ns
    rerun = cxr("benchmark", "run", str(plan))
    return {
        "plan": plan,
        "output": output,
        "killed": (proc.returncode, err),
        "after_kill": after_kill,
        "rerun": rerun,
        "stamp": (pixels_summary, stamp),
        "tmp": tmp,
    }


def test_sigterm_stops_the_runner_with_143_and_status_tells_what_is_left(interrupted):
    code, err = interrupted["killed"]
    assert code == 143, err
    st = interrupted["after_kill"]
    assert st[TRAIN0]["status"] == "done" and st["evaluate/1shot/pixels"]["status"] == "done"
    assert st[NEXT]["status"] == "pending" and "resumes" in st[NEXT]["reason"], st[NEXT]
    assert st["compare/2shot"]["status"] == "pending" and st["compare/2shot"]["reason"] == "not started"


def test_the_rerun_skips_finished_steps_and_completes(interrupted):
    rerun = interrupted["rerun"]
    assert rerun.returncode == 0, rerun.stderr
    assert "3 of 10 steps are done and unchanged; skipped" in rerun.stderr
    output = interrupted["output"]
    info = json.loads((output / "runs" / "supervised-conv4-tiny-seed0" / "run.json").read_text())
    assert len(info["sessions"]) == 1  # trained once
    summary, stamp = interrupted["stamp"]
    assert summary.stat().st_mtime_ns == stamp  # evaluated once
    assert state(output, NEXT)["attempts"] == 2  # the interrupted evaluation ran again (with --resume)
    st = status(interrupted["plan"])
    assert {s["status"] for s in st.values()} == {"done"}


def test_report_numbers_equal_the_compare_outputs(interrupted):
    out = interrupted["tmp"] / "report"
    res = cxr("benchmark", "report", str(interrupted["plan"]), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert_report_equals_comparisons(out)
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["pixels", "linear-probe"] and report["shots"] == [1, 2]
    assert {c["seeds"] for c in report["cells"] if c["method"] == "linear-probe"} == {2}  # a seed group
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "| linear-probe |" in (out / "report.md").read_text()
    again = cxr("benchmark", "report", str(interrupted["plan"]), "-o", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_a_changed_plan_redoes_only_the_steps_it_changes(interrupted):
    plan = write_plan(interrupted["plan"], *_paths(interrupted), reference="linear-probe")
    res = cxr("benchmark", "run", str(plan))
    assert res.returncode == 0, res.stderr
    assert "redoing them (--overwrite): compare/1shot, compare/2shot" in res.stderr
    assert "8 of 10 steps are done and unchanged" in res.stderr
    comparison = json.loads((interrupted["output"] / "compare" / "1shot" / "comparison.json").read_text())
    assert comparison["reference"] == "linear-probe"


def _paths(interrupted):
    import yaml

    data = yaml.safe_load(interrupted["plan"].read_text())
    return data["cache"], data["output"]


def test_failed_steps_are_recorded_with_their_log_and_independent_steps_go_on(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", tmp_path / "no-cache", tmp_path / "out", methods={"pixels": {}})
    res = cxr("benchmark", "run", str(plan))
    assert res.returncode == 3, res.stderr
    st = status(plan)
    for k in (1, 2):  # the 2-shot evaluation ran although the 1-shot one had failed
        step = st[f"evaluate/{k}shot/pixels"]
        assert step["status"] == "failed" and "does not exist" in step["reason"], step
        assert "does not exist" in Path(step["log"]).read_text()
        assert st[f"compare/{k}shot"]["status"] == "pending"
        assert st[f"compare/{k}shot"]["reason"] == f"blocked: evaluate/{k}shot/pixels did not finish"
    assert "failed: evaluate/1shot/pixels: Error: Cache" in res.stderr
