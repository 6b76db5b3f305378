"""Step states: one small JSON per step under ``OUTPUT/.benchmark/steps/``, written atomically.

A state records the step's command line, its fingerprint (:mod:`~cxr_tools.benchmark.steps`), its status
(``pending``, ``submitted``, ``running``, ``done``, ``failed``, ``interrupted``), the exit code, a one-line
reason, the log path, whether it is being redone (so an old complete output is not taken for the new one), the
process (host, pid) or SLURM job running it, its times and the command's wall time in seconds. A state file
exists as soon as the benchmark starts a step, so an output with a state is one this tool wrote: only those are
ever replaced with a command's ``--overwrite``.

Whether a step is finished is read from the output itself too (``run.json`` status ``completed`` of a training
run, ``summary.json`` of an evaluation, ``comparison.json`` of a comparison): a step that finished after its
runner died is done, and a deleted output is not.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxr_tools.benchmark.steps import Step
from cxr_tools.runtime.fs import atomic_write_json

STATE_DIR = ".benchmark"
STATE_VERSION = 1


@dataclass(frozen=True)
class StepState:
    """What the benchmark knows about one step."""

    id: str
    command: str
    argv: tuple[str, ...]
    output: str
    fingerprint: str
    status: str = "pending"
    exit_code: int | None = None
    reason: str = ""
    log: str = ""
    host: str | None = None
    pid: int | None = None
    job_id: str | None = None
    start: str | None = None
    end: str | None = None
    attempts: int = 0
    seconds: float | None = None
    redo: bool = False
    version: int = STATE_VERSION

    def with_(self, **changes: Any) -> StepState:
        return replace(self, **changes)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def state_root(output: Path) -> Path:
    return Path(output) / STATE_DIR


def state_path(output: Path, step_id: str) -> Path:
    return state_root(output) / "steps" / f"{step_id}.json"


def log_path(output: Path, step_id: str) -> Path:
    return state_root(output) / "logs" / f"{step_id}.log"


def read_state(path: Path) -> StepState | None:
    """The state at ``path`` (None when absent or torn: the step is then treated as never started)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["argv"] = tuple(data.get("argv") or ())
        return StepState(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_state(output: Path, state: StepState) -> StepState:
    atomic_write_json(state_path(output, state.id), asdict(state))
    return state


def all_states(output: Path) -> dict[str, StepState]:
    """Every recorded state under ``output``, by step id (also those of steps no longer in the plan)."""
    root = state_root(output) / "steps"
    out: dict[str, StepState] = {}
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        state = read_state(path)
        if state is not None:
            out[state.id] = state
    return out


def output_complete(step: Step | StepState) -> bool:
    """Whether the step's output is finished, read from the output itself."""
    out = Path(step.output)
    if step.command == "evaluate":
        return (out / "summary.json").is_file()
    if step.command == "compare":
        return (out / "comparison.json").is_file()
    try:
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("status") == "completed"


def process_alive(state: StepState) -> bool:
    """Whether the local process recorded as running the step still exists (on this host)."""
    if state.pid is None or state.host != socket.gethostname():
        return False
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_error(log: Path, limit: int = 300) -> str:
    """The reason a failed step gives: its log's last ``Error:`` line, else its last non-empty line."""
    try:
        lines = [line.strip() for line in Path(log).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("Error:") or "Error" in line.split(":")[0]]
    text = (errors or lines or [""])[-1]
    return text[:limit]
