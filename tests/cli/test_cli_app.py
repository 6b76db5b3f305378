"""`cxr app` from the command line, without serving: safe defaults and clear errors before anything starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from predict_fixtures import make_model_dir
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()


def test_another_host_needs_auth_and_auth_needs_a_password(tmp_path):
    model = make_model_dir(tmp_path / "run" / "model")
    res = runner.invoke(app, ["app", "-m", str(model), "--host", "0.0.0.0"])
    assert res.exit_code == 1 and "--auth USER:PASS" in res.stderr
    res = runner.invoke(app, ["app", "-m", str(model), "--auth", "alice"])
    assert res.exit_code == 1 and "USER:PASS" in res.stderr


def test_missing_run_and_missing_gradio_are_one_line_errors(tmp_path, monkeypatch):
    res = runner.invoke(app, ["app", "-m", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "nope" in res.stderr and "Traceback" not in res.stderr
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    model = make_model_dir(tmp_path / "run" / "model")
    res = runner.invoke(app, ["app", "-m", str(model)])
    assert res.exit_code == 1 and "cxr-tools[app]" in res.stderr


@pytest.mark.slow  # imports Gradio and builds the page before the port is tried
def test_a_taken_port_is_a_clear_error(tmp_path):
    model = make_model_dir(tmp_path / "run" / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = runner.invoke(app, ["app", "-m", str(model), "--port", str(port), "--device", "cpu"])
    assert res.exit_code == 1 and "--port" in res.stderr, res.output


def test_model_defaults_to_the_latest_completed_run_of_the_workspace(tmp_path, monkeypatch):
    import json
    import os

    import cxr_tools.webapp.server as server

    runs = Path(os.environ["CXR_HOME"]) / "runs"
    for name, end in (("old", "2026-01-01T00:00:00+00:00"), ("new", "2026-02-01T00:00:00+00:00")):
        make_model_dir(runs / "train" / name / "model")
        (runs / "train" / name / "run.json").write_text(json.dumps({"status": "completed", "end_time": end}))
    seen = []
    monkeypatch.setattr(server, "serve", lambda cfg, on_ready=None: seen.append(cfg))
    res = runner.invoke(app, ["app"])
    assert res.exit_code == 0, res.output
    assert seen[0].model == runs / "train" / "new" and "Model:" in res.stderr
    res = runner.invoke(app, ["app", "-m", "old"])  # a run's name in $CXR_RUNS
    assert res.exit_code == 0 and seen[1].model == runs / "train" / "old"
