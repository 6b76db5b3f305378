"""Run one step: its ``cxr`` command line as a child process, its output appended to the step's log, its state
recorded before and after.

The same function serves both executors: the local runner calls it per step, and each SLURM job runs
``python -m cxr_tools.benchmark.worker OUTPUT STEP_ID`` (an array job: ``--array-file FILE``, one step id per
line, picked by ``SLURM_ARRAY_TASK_ID``). SIGTERM, SIGINT and SIGUSR1 are forwarded to the command, which
checkpoints (and, with ``--requeue`` under SLURM, requeues itself) as it does when run by hand; the worker exits
with the command's exit code, so ``--dependency=afterok`` and ``&&`` see exactly what the command said. The child
gets SIGTERM when the worker dies, even by SIGKILL (Linux), so no orphan keeps writing into an output.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cxr_tools.benchmark.state import StepState, last_error, log_path, now, output_complete, read_state, state_path
from cxr_tools.benchmark.state import write_state as _write
from cxr_tools.errors import InputError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: Exit codes of a command stopped by a signal (docs/design.md: 128 + the signal; it checkpointed first).
SIGNAL_EXITS = frozenset({128 + int(s) for s in FORWARDED})


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_step(output: Path, step_id: str) -> tuple[int, int | None]:
    """Run the recorded command line of ``step_id``; returns its exit code and the signal forwarded, if any."""
    state = read_state(state_path(output, step_id))
    if state is None:
        raise InputError(f"No state for step {step_id} under {output}.", "Run `cxr benchmark run PLAN` first.")
    log = log_path(output, step_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    received: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc is not None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}  # before "running": no signal is lost
    try:
        running = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": job, "start": now(), "end": None}
        state = _write(
            output,
            state.with_(
                status="running", exit_code=None, reason="", log=str(log), attempts=state.attempts + 1, **running
            ),
        )
        argv = [sys.executable, "-m", "cxr_tools", *state.argv]
        with open(log, "ab") as fh:
            fh.write(
                f"=== {state.start} attempt {state.attempts} on {state.host}: cxr {shlex.join(state.argv)}\n".encode()
            )
            fh.flush()
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            started = time.monotonic()
            if received:  # a signal came while the command was starting
                proc.send_signal(received[0])
            code = proc.wait()
            seconds = round(time.monotonic() - started, 3)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    code = 128 - code if code < 0 else code  # killed outright: report it as a shell would
    _write(output, finished(state.with_(seconds=seconds), code, bool(received)))
    return code, received[0] if received else None


def finished(state: StepState, code: int, signalled: bool) -> StepState:
    """The state after the command exited with ``code``."""
    if code == 0 and output_complete(state):
        return state.with_(status="done", exit_code=0, end=now(), pid=None, redo=False)
    if code == 0 or code in SIGNAL_EXITS or signalled:
        why = "exited 0 with an incomplete output" if code == 0 else f"stopped by a signal (exit {code})"
        return state.with_(
            status="interrupted", exit_code=code, end=now(), pid=None, reason=f"{why}; a rerun resumes it"
        )
    reason = last_error(Path(state.log)) or f"exit {code}"
    return state.with_(status="failed", exit_code=code, end=now(), pid=None, reason=reason)


def main(args: list[str] | None = None) -> int:
    """``python -m cxr_tools.benchmark.worker OUTPUT (STEP_ID | --array-file FILE)``."""
    args = list(sys.argv[1:] if args is None else args)
    output = Path(args[0])
    if args[1] == "--array-file":
        ids = Path(args[2]).read_text(encoding="utf-8").split()
        step_id = ids[int(os.environ["SLURM_ARRAY_TASK_ID"])]
    else:
        step_id = args[1]
    code, _ = run_step(output, step_id)
    return code


if __name__ == "__main__":
    sys.exit(main())
