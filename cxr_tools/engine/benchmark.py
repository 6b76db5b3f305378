"""Engine of ``cxr benchmark run|status|report PLAN``: a paper's few-shot table from one plan file.

The plan (:mod:`cxr_tools.benchmark.plan`) expands into ``cxr`` command lines (:mod:`cxr_tools.benchmark.steps`):
training runs shared across shot counts where the method allows, evaluations per shot count and training seed on
one episode list per shot count, and one ``cxr compare`` per shot count. ``run`` executes them locally in
dependency order (:mod:`cxr_tools.benchmark.execute`) or submits them as dependent SLURM jobs
(:mod:`cxr_tools.benchmark.slurm`); a rerun skips finished steps, resumes interrupted ones with the commands' own
``--resume``, and redoes (``--overwrite``) the steps whose settings changed. ``status`` reads the step states;
``report`` turns the comparisons into the table and figures (:mod:`cxr_tools.benchmark.report`). Steps are
subprocesses, never calls of other engines, so this module composes commands, not code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cxr_tools.benchmark.execute import decide, run_local
from cxr_tools.benchmark.plan import CommandFlags, Plan, SlurmPlan, load_plan
from cxr_tools.benchmark.report import Report, build_report, write_report
from cxr_tools.benchmark.slurm import refresh
from cxr_tools.benchmark.state import StepState, all_states, log_path, output_complete, process_alive
from cxr_tools.benchmark.steps import Step, expand
from cxr_tools.errors import ConfigError
from cxr_tools.runtime.progress import Progress, null_progress

log = logging.getLogger(__name__)
EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class BenchmarkRunConfig:
    """Options of ``cxr benchmark run``; the SLURM settings override the plan's ``slurm`` section."""

    plan: Path
    executor: str = "local"
    partition: str | None = None
    time: str | None = None
    gpus: int | None = None
    account: str | None = None


@dataclass(frozen=True)
class BenchmarkStatusConfig:
    """Options of ``cxr benchmark status``."""

    plan: Path


@dataclass(frozen=True)
class BenchmarkReportConfig:
    """Options of ``cxr benchmark report``."""

    plan: Path
    output: Path
    overwrite: bool = False


@dataclass(frozen=True)
class StepStatus:
    """One step as ``status`` shows it: ``pending``, ``running``, ``done`` or ``failed``, with the reason."""

    id: str
    command: str
    status: str
    reason: str
    log: str
    output: str
    job_id: str | None = None


@dataclass(frozen=True)
class RunResult:
    """What ``run`` did: steps skipped (done), run, redone (settings changed), failed (with reasons), blocked by a
    failure, submitted (SLURM job ids), and recorded steps the plan no longer has (kept on disk)."""

    plan: Path
    output: Path
    executor: str
    steps: int
    skipped: tuple[str, ...]
    ran: tuple[str, ...]
    redone: tuple[str, ...]
    failed: dict[str, str]
    blocked: tuple[str, ...]
    removed: tuple[str, ...]
    jobs: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusResult:
    plan: Path
    output: Path
    steps: tuple[StepStatus, ...]
    counts: dict[str, int]


def load(plan: Path, commands: CommandFlags | None) -> tuple[Plan, list[Step]]:
    """The checked plan and its steps."""
    checked = load_plan(plan, commands)
    return checked, expand(checked)


def run_benchmark(
    config: BenchmarkRunConfig, progress: Progress | None = None, commands: CommandFlags | None = None
) -> RunResult:
    """Execute (or submit) every step of the plan that is not done; see the module docstring."""

    if config.executor not in EXECUTORS:
        raise ConfigError(f"Unknown executor '{config.executor}'.", f"Use one of: {', '.join(EXECUTORS)}.")
    plan, steps = load(config.plan, commands)
    decisions, removed = decide(steps, plan.output)
    redone = tuple(d.step.id for d in decisions if d.action == "redo")
    skipped = tuple(d.step.id for d in decisions if d.action == "skip")
    if redone:
        log.warning("settings changed since these steps ran; redoing them (--overwrite): %s", ", ".join(redone))
    if removed:
        log.warning("no longer in the plan (their outputs are kept): %s", ", ".join(removed))
    if skipped:
        log.info("%d of %d steps are done and unchanged; skipped", len(skipped), len(steps))
    ran = tuple(d.step.id for d in decisions if d.action == "run")
    if config.executor == "slurm":
        from cxr_tools.benchmark.slurm import submit

        subs = submit(decisions, plan.output, _slurm_settings(plan.slurm, config))
        jobs = {s.job_id: s.steps for s in subs}
        return RunResult(
            config.plan, plan.output, "slurm", len(steps), skipped, ran, redone, {}, (), tuple(removed), jobs
        )
    results = run_local(decisions, plan.output, null_progress(progress))
    states = all_states(plan.output)
    failed = {i: states[i].reason if i in states else "" for i, s in results.items() if s == "failed"}
    blocked = tuple(i for i, s in results.items() if s == "blocked")
    return RunResult(
        config.plan, plan.output, "local", len(steps), skipped, ran, redone, failed, blocked, tuple(removed)
    )


def _slurm_settings(plan: SlurmPlan, config: BenchmarkRunConfig) -> SlurmPlan:
    flags = {"partition": config.partition, "time": config.time, "gpus": config.gpus, "account": config.account}
    return SlurmPlan(**{**plan.__dict__, **{k: v for k, v in flags.items() if v is not None}})


def benchmark_status(config: BenchmarkStatusConfig, commands: CommandFlags | None = None) -> StatusResult:
    """Every step of the plan with its status, reason and log path."""

    plan, steps = load(config.plan, commands)
    states = refresh(all_states(plan.output), plan.output)
    rows = tuple(_status(step, states.get(step.id), plan.output) for step in steps)
    counts = {s: sum(r.status == s for r in rows) for s in ("pending", "running", "done", "failed")}
    return StatusResult(config.plan, plan.output, rows, counts)


def _status(step: Step, state: StepState | None, output: Path) -> StepStatus:
    def row(status: str, reason: str) -> StepStatus:
        log_file = state.log if state is not None and state.log else str(log_path(output, step.id))
        return StepStatus(
            step.id, step.command, status, reason, log_file, str(step.output), state.job_id if state else None
        )

    if state is None:
        return row("pending", "not started")
    if state.fingerprint != step.fingerprint:
        return row("pending", "settings changed: the next run redoes it")
    if output_complete(step) and not (state.redo and state.status != "done"):
        return row("done", "")
    if state.status == "running":
        if state.job_id or process_alive(state):
            return row("running", f"job {state.job_id}" if state.job_id else f"pid {state.pid} on {state.host}")
        return row("pending", "interrupted (its runner is gone); the next run resumes it")
    if state.status == "failed":
        return row("failed", state.reason)
    if state.status == "done":
        return row("pending", "output missing: the next run redoes it")
    return row("pending", state.reason or state.status)


def benchmark_report(config: BenchmarkReportConfig, commands: CommandFlags | None = None) -> Report:
    """The table, plots and tests of every finished comparison, written to ``config.output``."""
    plan, steps = load(config.plan, commands)
    return write_report(build_report(steps, plan.reference), Path(config.output), overwrite=config.overwrite)
