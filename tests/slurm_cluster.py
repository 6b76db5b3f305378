"""The local one-node SLURM cluster the ``slurm`` tests submit to.

CI starts it in ``.ci/run`` (``.ci/setup-slurm.sh``, as root) before pytest; pytest never installs or restarts
it. A test that needs it skips with the reason - sbatch missing, or a controller that does not answer, with the
command that starts one - so a CI log says why.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _controller_up() -> tuple[bool, str]:
    try:
        done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return "is UP" in done.stdout, (done.stdout + done.stderr).strip()


def require_slurm() -> None:
    """Skip unless sbatch is installed and its controller answers."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not on PATH: needs a local SLURM cluster (`bash .ci/setup-slurm.sh` as root, as in CI)")
    up, answer = _controller_up()
    if not up:
        pytest.skip(f"sbatch is installed but the SLURM controller does not answer ({answer}); start it with "
                    "`bash .ci/setup-slurm.sh` as root (.ci/run does)")  # fmt: skip


def start_requeued_now(job_id: str, timeout: float = 300) -> bool:
    """Start a job that requeued itself without SLURM's hold of about two minutes (its BeginTime) - once it is
    pending again and nothing on the cluster is still completing (the previous incarnation's step and epilog:
    a start before that fails the job). False when it never got there (the caller's own wait reports it)."""
    import re
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
        info = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
        completing = subprocess.run(["squeue", "-h", "-t", "CG"], capture_output=True, text=True, timeout=30)
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime" and not completing.stdout.strip():
            time.sleep(1.0)  # let slurmd finish the old incarnation's clean-up
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=30)
            return True
        if info.get("JobState") not in (None, "RUNNING", "COMPLETING", "PENDING", "REQUEUED"):
            return False
        time.sleep(0.2)
    return False
