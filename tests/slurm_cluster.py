"""The local one-node SLURM cluster the ``slurm`` tests submit to (started by ``.ci/setup-slurm.sh``).

A controller that is down is restarted once with that script (as root, as in CI); a cluster that still does
not answer skips the test with the daemons' own diagnostics in the reason, so a CI log says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / ".ci" / "setup-slurm.sh"


def _controller_up() -> bool:
    try:
        done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in done.stdout


_failed_restart: list[str] = []  # a restart that did not help is not tried again by the next test


def require_slurm() -> None:
    """Skip unless sbatch is installed and its controller answers, restarting it once when we may."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not on PATH: needs a local SLURM cluster (.ci/setup-slurm.sh starts one), as in CI")
    if _controller_up():
        return
    output = "not restarted: needs root and .ci/setup-slurm.sh"
    if _failed_restart:
        output = _failed_restart[0]
    elif os.geteuid() == 0 and SETUP.exists():
        try:
            done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=300)
            output = (done.stdout + done.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            output = f"{SETUP} did not finish in 300 s"
        if _controller_up():
            return
        _failed_restart.append(output)
    pytest.skip(f"sbatch is installed but the SLURM controller does not answer; restart: {output}")
