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
