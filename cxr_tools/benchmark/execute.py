"""What a (re)run does with each step, and the local executor.

:func:`decide` compares the plan's steps with the recorded states: a step whose output is complete and whose
fingerprint is unchanged is skipped; a step whose fingerprint changed (its settings, or those of a step it
depends on) is redone with its command's ``--overwrite``; every other step runs with its command's own
``--resume`` (new, interrupted, failed). :func:`run_local` runs them one after the other in dependency order:
a failed step is recorded with its log, steps that do not depend on it go on, and steps that do are left
pending, blocked. One local runner per output root at a time (a lock file, released by the OS if the runner
dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_tools.benchmark.state import (
    StepState,
    all_states,
    log_path,
    output_complete,
    read_state,
    state_path,
    state_root,
    write_state,
)
from cxr_tools.benchmark.steps import Step, command_line
from cxr_tools.benchmark.worker import FORWARDED, run_step
from cxr_tools.errors import CxrError, OutputExistsError
from cxr_tools.runtime.progress import Progress, Task


class BenchmarkInterrupted(CxrError):
    """The runner got a signal: the running step was stopped after its checkpoint; a rerun resumes."""

    def __init__(self, signum: int, step: str) -> None:
        super().__init__(f"Interrupted by signal {signum} at step {step}.", "Rerun `cxr benchmark run` to resume.")
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class Decision:
    """One step and what this run does with it: ``skip`` (done), ``run`` (new or resumed) or ``redo``."""

    step: Step
    action: str
    previous: StepState | None


def decide(steps: Sequence[Step], output: Path) -> tuple[list[Decision], list[str]]:
    """Each step's action, and the ids of recorded steps the plan no longer has (their outputs are kept)."""
    states = all_states(output)
    out = []
    for step in steps:
        prev = states.get(step.id)
        complete = output_complete(step)
        # a redo not yet done whose old output is still complete must still replace it; once the command started
        # replacing it (incomplete output), the next run resumes the new one
        if prev is not None and (
            prev.fingerprint != step.fingerprint or (prev.redo and prev.status != "done" and complete)
        ):
            action = "redo"
        elif prev is not None and complete:
            action = "skip"
            if prev.status != "done":  # it finished after its runner died, or under SLURM after `status` looked
                write_state(output, prev.with_(status="done", exit_code=0, reason=""))
        else:
            action = "run"
        out.append(Decision(step, action, prev))
    ids = {s.id for s in steps}
    return out, sorted(i for i in states if i not in ids)


def record(
    output: Path, decision: Decision, status: str = "pending", requeue: bool = False, **fields: object
) -> StepState:
    """Write the state a step starts from: its command line for this run (resume or overwrite)."""
    step = decision.step
    mode = "overwrite" if decision.action == "redo" else "resume"
    prev = decision.previous
    state = StepState(
        id=step.id,
        command=step.command,
        argv=tuple(command_line(step, mode, requeue)),
        output=str(step.output),
        fingerprint=step.fingerprint,
        status=status,
        log=str(log_path(output, step.id)),
        attempts=prev.attempts if prev is not None and prev.fingerprint == step.fingerprint else 0,
        redo=mode == "overwrite",
    )
    return write_state(output, state.with_(**fields))


@contextlib.contextmanager
def runner_lock(output: Path) -> Iterator[None]:
    """Hold the output root's lock, or refuse: another ``cxr benchmark run`` is working there."""
    root = state_root(output)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputExistsError(
                f"Another `cxr benchmark run` is working in {output}.", "Wait for it, or stop it (Ctrl-C) and rerun."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_local(decisions: Sequence[Decision], output: Path, progress: Progress) -> dict[str, str]:
    """Run every step not skipped, in order; returns each step's final status (``done``, ``failed``, ``blocked``).

    Raises:
        BenchmarkInterrupted: the runner got SIGTERM / SIGINT / SIGUSR1 (forwarded to the running command).
    """
    results: dict[str, str] = {d.step.id: "done" for d in decisions if d.action == "skip"}
    todo = [d for d in decisions if d.action != "skip"]
    if not todo:
        return results
    caught: list[int] = []  # a signal between two steps stops the runner before the next one starts

    def note(signum: int, _frame: object) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, note) for s in FORWARDED}
    try:
        with runner_lock(output), progress.task("benchmark steps", total=len(todo)) as task:
            for d in todo:
                if caught:
                    raise BenchmarkInterrupted(caught[0], d.step.id)
                results[d.step.id] = _run_one(d, results, output, task)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return results


def _run_one(d: Decision, results: dict[str, str], output: Path, task: Task) -> str:
    """Run one step unless a step it needs did not finish; its final status."""
    task.advance()
    bad = [dep for dep in d.step.deps if results.get(dep) in ("failed", "blocked")]
    if bad:
        record(output, d, reason=f"blocked: {bad[0]} did not finish")
        return "blocked"
    record(output, d)
    task.set_postfix(d.step.id)
    _, signum = run_step(output, d.step.id)
    if signum is not None:
        raise BenchmarkInterrupted(signum, d.step.id)
    state = read_state(state_path(output, d.step.id))
    return "done" if state is not None and state.status == "done" else "failed"
