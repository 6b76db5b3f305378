"""`cxr evaluate --method pixels|linear-probe|scratch --match`: the baselines from the command line."""

from __future__ import annotations

import json

import pytest
import torch
from evaluate_factory import make_eval_cache, make_run
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.methods.adapters import IN_SAMPLE

torch.set_num_threads(1)
runner = CliRunner()
FAST = ["--episodes", "3", "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_baselines")
    cache = make_eval_cache(tmp)
    return tmp, cache, make_run(tmp, cache, "maml"), make_run(tmp, cache, "supervised")


def test_pixels_needs_no_run(env, tmp_path):
    _, cache, _, _ = env
    res = runner.invoke(
        app, ["evaluate", "--method", "pixels", "--data", str(cache), "-o", str(tmp_path / "px"), *FAST]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "px" / "summary.json").read_text())
    assert summary["method"] == "pixels" and summary["run"] is None and summary["episodes"] == 3
    assert "cxr evaluate: pixels" in res.stdout and "overall" in res.stdout


def test_linear_probe_on_a_run_goes_to_its_own_folder(env):
    _, cache, _, sup = env
    res = runner.invoke(app, ["evaluate", str(sup), "--method", "linear-probe", "--data", str(cache), *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((sup / "eval-linear-probe" / "summary.json").read_text())
    assert summary["name"] == "supervised:linear-probe" and summary["settings"]["features"] == "backbone"


def test_scratch_needs_a_budget_and_match_copies_it(env, tmp_path):
    _, cache, maml, sup = env
    base = ["evaluate", "--method", "scratch", "--data", str(cache), *FAST]
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "none")])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "--adapt-steps and --inner-lr" in lines[0] and "--match RUN" in lines[0]
    assert not (tmp_path / "none").exists()

    res = runner.invoke(app, [*base, "-o", str(tmp_path / "maml"), "--match", str(maml)])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "maml" / "summary.json").read_text())["settings"]
    assert settings == {
        "method": "scratch",
        "inner_lr": 0.1,
        "adapt_steps": 2,
        "optimiser": "sgd",
        "matched_run": str(maml),
        "budget_source": "its model card",
        "architecture": "conv4-tiny",
        "support_scores": IN_SAMPLE,
    }
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "sup"), "--match", str(sup), "--adapt-steps", "4"])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "sup" / "summary.json").read_text())["settings"]
    assert (settings["adapt_steps"], settings["inner_lr"], settings["optimiser"]) == (4, 0.01, "adam")
    assert settings["matched_run"] == str(sup)
