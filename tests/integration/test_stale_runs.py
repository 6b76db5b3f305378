"""A run whose command was killed with ``kill -9`` is listed ``interrupted``, not ``running``, and run.json says so
once the run is opened again: a real subprocess holds the run's lock, then dies by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.paths import runs_root
from cxr_tools.runtime.rundir import open_run

HOLDER = textwrap.dedent(
    """
    import sys, time
    from cxr_tools.runtime.rundir import open_run
    open_run(sys.argv[1], "train", {"lr": 0.1})
    print("ready", flush=True)
    time.sleep(120)
    """
)


def _listed_status(name: str) -> str:
    res = CliRunner().invoke(app, ["runs", "--kind", "train", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    entries = data["entries"] if isinstance(data, dict) else data
    return next(e["status"] for e in entries if e["name"] == name)


def test_a_run_killed_with_sigkill_lists_as_interrupted_and_is_corrected_when_reopened():
    run = runs_root() / "train" / "killed"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert _listed_status("train/killed") == "running"  # its lock is held: really running
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "running" and (run / ".cxr.lock").is_file()  # what kill -9 leaves behind

    assert _listed_status("train/killed") == "interrupted"
    res = CliRunner().invoke(app, ["runs", "--status", "interrupted", "--json"])
    assert "train/killed" in res.stdout
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # listing only reads

    reopened = open_run(run, "train", {"lr": 0.1})  # the next command on the run corrects run.json
    info = reopened.read_info()
    assert info["status"] == "running" and info["resumed"] == 1
    first, second = info["sessions"]
    assert first["status"] == "interrupted" and first["end_time"] and "status" not in second
