"""``cxr benchmark`` step states: what a rerun does with each step (skip / resume / redo, only outputs the tool
wrote) and how a finished command is classified (done / interrupted / failed with its log's error line)."""

from __future__ import annotations

import json
from pathlib import Path

from cxr_tools.benchmark.execute import decide, record
from cxr_tools.benchmark.state import StepState, read_state, state_path, write_state
from cxr_tools.benchmark.steps import Step
from cxr_tools.benchmark.worker import finished


def _step(tmp_path: Path, fingerprint: str = "f1") -> Step:
    return Step("evaluate/1shot/pixels", "evaluate", ("--method", "pixels"), tmp_path / "eval", fingerprint=fingerprint)


def _complete(step: Step) -> None:
    step.output.mkdir(parents=True, exist_ok=True)
    (step.output / "summary.json").write_text("{}")


def _actions(steps: list[Step], out: Path) -> list[str]:
    return [d.action for d in decide(steps, out)[0]]


def test_a_rerun_skips_done_steps_resumes_others_and_redoes_changed_ones(tmp_path):
    out, step = tmp_path / "root", _step(tmp_path)
    assert _actions([step], out) == ["run"]  # never started
    (decision,), _ = decide([step], out)
    state = record(out, decision)
    assert state.argv[-1] == "--resume" and not state.redo
    assert _actions([step], out) == ["run"]  # started, not finished: resume
    _complete(step)
    assert _actions([step], out) == ["skip"]  # finished (even if its runner died before saying so)
    assert read_state(state_path(out, step.id)).status == "done"
    changed = _step(tmp_path, "f2")
    (decision,), _ = decide([changed], out)
    assert decision.action == "redo"
    state = record(out, decision, reason="blocked: x did not finish")  # blocked before it could run
    assert state.argv[-1] == "--overwrite" and state.redo
    assert _actions([changed], out) == ["redo"]  # the old complete output is still not the new one
    (step.output / "summary.json").unlink()  # the command started replacing it
    assert _actions([changed], out) == ["run"]  # so the next run resumes the new one


def test_outputs_the_benchmark_did_not_write_are_never_overwritten(tmp_path):
    out, step = tmp_path / "root", _step(tmp_path)
    _complete(step)  # someone else's evaluation where the plan puts one
    (decision,), _ = decide([step], out)
    assert decision.action == "run" and record(out, decision).argv[-1] == "--resume"  # the command refuses it


def test_steps_no_longer_in_the_plan_are_reported_and_kept(tmp_path):
    out, step = tmp_path / "root", _step(tmp_path)
    write_state(out, StepState(id="evaluate/9shot/old", command="evaluate", argv=(), output="x", fingerprint="f"))
    assert decide([step], out)[1] == ["evaluate/9shot/old"]


def test_a_finished_command_is_done_interrupted_or_failed_with_its_error_line(tmp_path):
    step = _step(tmp_path)
    log = tmp_path / "step.log"
    log.write_text("[evaluate] started\nError: Cache nope does not exist. Create it with `cxr preprocess`.\n")
    state = StepState(step.id, "evaluate", (), str(step.output), "f1", status="running", log=str(log), redo=True)
    failed = finished(state, 1, False)
    assert failed.status == "failed" and failed.reason.startswith("Error: Cache nope does not exist")
    assert finished(state, 143, True).status == "interrupted"
    assert finished(state, 0, False).status == "interrupted"  # exit 0 but no summary.json
    _complete(step)
    done = finished(state, 0, False)
    assert done.status == "done" and not done.redo
    assert json.loads(json.dumps(done.__dict__))["status"] == "done"
