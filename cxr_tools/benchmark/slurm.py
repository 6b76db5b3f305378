"""The SLURM executor: the same steps, submitted with ``sbatch`` as jobs that depend on each other.

Plain ``sbatch`` rather than submitit: every step already is a shell command line, so a job is a three-line
script a user can read, resubmit or edit under ``OUTPUT/.benchmark/slurm/``; submitit's strength, pickling
Python callables, would add a second way to describe a step and a dependency on the compute nodes for nothing.

Steps alike (same command, same dependencies: the evaluations of one training run over the shot counts, the
runs of one method over the seeds) go into one job array, and a dependant waits for the very array task it needs
(``afterok:JOB_TASK``), so a failed task holds back only what depends on it; each task runs
``python -m cxr_tools.benchmark.worker`` on its step (:mod:`~cxr_tools.benchmark.worker`), which records the
state and exits with the command's exit code, so ``--dependency=afterok`` holds back exactly what depends on a
failure (``--kill-on-invalid-dep=yes`` removes those jobs; ``cxr benchmark status`` says so). Training commands
get ``--requeue`` and the jobs ``--signal=B:USR1@120`` and ``--requeue``: a preempted job checkpoints, requeues
itself and resumes, as the commands do by hand. A rerun of ``cxr benchmark run --executor slurm`` submits only
what is neither done nor still queued.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_tools.benchmark.execute import Decision, record
from cxr_tools.benchmark.plan import SlurmPlan
from cxr_tools.benchmark.state import StepState, state_root, write_state
from cxr_tools.errors import CxrError, DependencyError

TRAINING = frozenset({"train", "train-siamese", "meta-train"})
ACTIVE = frozenset({"submitted", "running"})


class SubmitError(CxrError):
    """sbatch refused a job."""


@dataclass(frozen=True)
class Submission:
    """One sbatch call: its job id and the steps it runs (one per array task)."""

    job_id: str
    steps: tuple[str, ...]
    script: Path


def queued_jobs(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` of the jobs still known to ``squeue`` (array tasks as ``JOB_TASK``)."""
    ids = sorted({j.split("_")[0] for j in job_ids if j})
    if not ids or shutil.which("squeue") is None:
        return {}
    done = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T|%r", "--jobs", ",".join(ids)], capture_output=True, text=True, timeout=60
    )
    out = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def submit(decisions: Sequence[Decision], output: Path, settings: SlurmPlan) -> list[Submission]:
    """Submit every step that is neither done nor queued, arrays where steps are alike; returns the submissions."""
    if shutil.which("sbatch") is None:
        raise DependencyError(
            "sbatch is not on PATH: the SLURM executor needs a SLURM cluster.",
            "Run on a login node, or use --executor local.",
        )
    previous = {d.step.id: d.previous for d in decisions if d.previous is not None}
    queued = queued_jobs([p.job_id or "" for p in previous.values() if p.status != "done"])
    job_of: dict[str, str] = {}  # step id -> job id its dependants wait for
    todo: list[Decision] = []
    for d in decisions:
        prev = d.previous
        if d.action == "skip":
            continue
        # still queued, running, or requeued after a preemption: leave it be
        if d.action == "run" and prev is not None and prev.job_id is not None and _in(prev.job_id, queued):
            job_of[d.step.id] = str(prev.job_id)
            continue
        todo.append(d)
    groups: dict[tuple[int, str, tuple[str, ...]], list[Decision]] = {}
    level: dict[str, int] = {}
    for d in todo:  # decisions come in dependency order; alike = same command, same dependencies
        level[d.step.id] = 1 + max((level.get(dep, -1) for dep in d.step.deps), default=-1)
        groups.setdefault((level[d.step.id], d.step.command, tuple(sorted(d.step.deps))), []).append(d)
    submissions: list[Submission] = []
    for (_, command, _), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
        deps = sorted({job_of[dep] for dep in members[0].step.deps if dep in job_of})
        sub = _sbatch(members, output, settings, deps, f"{command}-{len(submissions)}")
        submissions.append(sub)
        for i, d in enumerate(members):
            task = f"{sub.job_id}_{i}" if len(members) > 1 else sub.job_id
            job_of[d.step.id] = task  # dependants wait for this very task, not the whole array
            record(output, d, status="submitted", job_id=task, requeue=command in TRAINING)
    return submissions


def _sbatch(members: list[Decision], output: Path, s: SlurmPlan, deps: list[str], name: str) -> Submission:
    folder = state_root(output) / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    ids = [d.step.id for d in members]
    steps_file = folder / f"{name}.steps"
    steps_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    worker = [sys.executable, "-m", "cxr_tools.benchmark.worker", str(output)]
    worker += ["--array-file", str(steps_file)] if len(ids) > 1 else [ids[0]]
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=cxr-{members[0].step.command}",
        f"#SBATCH --output={folder}/{name}-%A_%a.out",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
    ]
    options = {
        "partition": s.partition,
        "time": s.time,
        "account": s.account,
        "cpus-per-task": s.cpus_per_task,
        "mem": s.mem,
        "gpus": s.gpus or None,
    }
    lines += [f"#SBATCH --{k}={v}" for k, v in options.items() if v is not None]
    lines += [f"#SBATCH {x}" for x in s.extra]
    lines += [f"# steps: {', '.join(ids)}", f"exec {shlex.join(worker)}", ""]
    script = folder / f"{name}.sh"
    script.write_text("\n".join(lines), encoding="utf-8")
    cmd = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
    cmd += [f"--array=0-{len(ids) - 1}"] if len(ids) > 1 else []
    cmd += [f"--dependency=afterok:{':'.join(deps)}"] if deps else []
    done = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SubmitError(
            f"sbatch refused {script}: {done.stderr.strip() or done.stdout.strip()}",
            "Check the plan's slurm settings (partition, account, time) with `sinfo`.",
        )
    return Submission(done.stdout.strip().split(";")[0], tuple(ids), script)


def _in(job: str, queued: dict[str, tuple[str, str]]) -> bool:
    return job in queued or job.split("_")[0] in queued


def refresh(states: dict[str, StepState], output: Path) -> dict[str, StepState]:
    """States of SLURM steps as the queue sees them: the job's queue state as the reason while it waits, and
    ``failed`` for a job that left the queue without a final state (a dependency failed, cancelled, time limit)."""
    waiting = {i: s for i, s in states.items() if (s.status in ACTIVE or s.status == "interrupted") and s.job_id}
    if not waiting:
        return states
    queued = queued_jobs([s.job_id or "" for s in waiting.values()])
    out = dict(states)
    for i, s in waiting.items():
        job = str(s.job_id)
        entry = queued.get(job) or queued.get(job.split("_")[0])
        if entry is None and s.status == "interrupted":
            continue  # stopped and not requeued: the next run resumes it
        if entry is None:
            why = (
                "without running (a dependency failed, or it was cancelled)"
                if s.status == "submitted"
                else ("while the step ran (time limit, cancelled, or node failure)")
            )
            out[i] = write_state(output, s.with_(status="failed", reason=f"job {job} left the queue {why}"))
        elif s.status != "running":
            out[i] = s.with_(reason=f"job {job} {entry[0].lower()} ({entry[1]})")
    return out
