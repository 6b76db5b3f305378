"""`cxr evaluate`: the table on stdout, --json, --config, write-once, and one-line errors with exit code 1."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from cli_helpers import assert_one_line_error
from evaluate_factory import make_eval_cache, make_run
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.methods.adapters import IN_SAMPLE

torch.set_num_threads(1)
runner = CliRunner()
FAST = ["--episodes", "3", "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots", "--steps", "5"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_evaluate")
    cache = make_eval_cache(tmp)
    return tmp, cache, make_run(tmp, cache, "maml"), make_run(tmp, cache, "supervised")


def test_evaluate_prints_the_per_class_table_and_writes_the_evaluation(env):
    _, cache, maml, _ = env
    res = runner.invoke(app, ["evaluate", str(maml), "--data", str(cache), *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((maml / "eval" / "summary.json").read_text())
    assert "overall" in res.stdout and "mean [95% interval]" in res.stdout and "precision" in res.stdout
    for cls in summary["per_class"]:
        assert cls in res.stdout
    overall = summary["overall"]["auc"]
    assert f"{overall['mean']:.3f} [{overall['low']:.3f}, {overall['high']:.3f}]" in res.stdout
    assert summary["method"] == "maml" and summary["episodes"] == 3
    assert summary["settings"]["inner_lr"] == 0.1 and summary["settings"]["adapt_steps"] == 2  # the run's budget

    again = runner.invoke(app, ["evaluate", str(maml), "--data", str(cache), *FAST])
    assert_one_line_error(again, "already complete", "--overwrite")
    forced = runner.invoke(app, ["evaluate", str(maml), "--data", str(cache), *FAST, "--overwrite", "--json"])
    assert forced.exit_code == 0, forced.output
    data = json.loads(forced.stdout)
    assert data["overall"] == summary["overall"] and data["episode_list_hash"] == summary["episode_list_hash"]


def test_scratch_needs_no_run_and_flags_override_the_config_file(env, tmp_path):
    _, cache, _, _ = env
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("evaluate:\n  episodes: 2\n  adapt_steps: 1\n  inner_lr: 0.01\n  backbone: conv4-tiny\n")
    out = tmp_path / "scratch"
    args = ["evaluate", "--method", "scratch", "--data", str(cache), "-o", str(out), "--config", str(cfg)]
    res = runner.invoke(app, [*args, "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["episodes"] == 2 and data["method"] == "scratch"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == {
        "method": "scratch",
        "inner_lr": 0.01,
        "adapt_steps": 1,
        "optimiser": "sgd",
        "matched_run": None,
        "architecture": "conv4-tiny",
        "support_scores": IN_SAMPLE,
    }
    res = runner.invoke(app, [*args, "--episodes", "1", "--overwrite", "--shots", "2", "--queries", "3", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["episodes"] == 1


def test_finetune_all_goes_to_its_own_folder(env):
    _, cache, _, sup = env
    res = runner.invoke(app, ["evaluate", str(sup), "--data", str(cache), "--finetune", "all", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((sup / "eval-finetune-all" / "summary.json").read_text())
    assert summary["settings"]["mode"] == "all" and summary["settings"]["steps"] == 5


def test_bad_inputs_exit_1_with_one_line(env, tmp_path):
    _, cache, maml, sup = env
    assert_one_line_error(runner.invoke(app, ["evaluate", str(maml)]), "--data")
    assert_one_line_error(runner.invoke(app, ["evaluate", "--data", str(cache)]), "--method auto needs a run")
    assert_one_line_error(
        runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--data", str(cache)]), "does not exist"
    )
    (tmp_path / "half").mkdir()
    assert_one_line_error(
        runner.invoke(app, ["evaluate", str(tmp_path / "half"), "--data", str(cache)]), "never finished"
    )
    assert_one_line_error(
        runner.invoke(app, ["evaluate", str(sup), "--data", str(tmp_path)]), "not a cxr cache", "cxr preprocess"
    )
    assert_one_line_error(runner.invoke(app, ["evaluate", str(sup), "--data", str(cache), "--method", "knn"]), "knn")
    assert_one_line_error(
        runner.invoke(app, ["evaluate", str(sup), "--data", str(cache), "--shots", "50", "-o", str(tmp_path / "o")]),
        "Too few patients",
    )
    for bad in ("2", "foo"):  # a usage error (exit 2) naming the accepted forms
        res = runner.invoke(app, ["evaluate", str(sup), "--data", str(cache), "--threshold", bad])
        assert res.exit_code == 2, res.output
        assert "--threshold" in res.stderr and "support" in res.stderr and "none" in res.stderr


def test_threshold_rules_support_fixed_and_none(env, tmp_path):
    _, cache, _, _ = env
    base = ["evaluate", "--method", "pixels", "--data", str(cache), "--episodes", "2", "--shots", "2"]
    base += ["--queries", "3", "--no-plots", "--bootstrap", "0"]
    tables = {}
    for rule in ("support", "0.3", "none"):
        out = tmp_path / rule
        res = runner.invoke(app, [*base, "-o", str(out), *(["--threshold", rule] if rule != "support" else [])])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["threshold"] == rule
        tables[rule] = pd.read_csv(out / "episodes.csv", dtype={"class": str})
        if rule == "none":
            assert summary["metrics"] == ["auc", "ap"] and set(summary["overall"]) == {"auc", "ap"}
            assert not {"threshold", "f1", "precision", "recall"} & set(tables[rule].columns)
            assert "F1" not in res.stdout
        else:
            assert f"F1@{rule}" in res.stdout.replace("\n", "")
            assert {"threshold", "f1", "precision", "recall"} <= set(tables[rule].columns)
    assert (tables["0.3"]["threshold"] == 0.3).all()
    assert tables["support"]["threshold"].between(0, 1).all()
    # the threshold-free metrics do not depend on the rule
    assert tables["support"]["auc"].equals(tables["none"]["auc"]) and tables["0.3"]["ap"].equals(tables["none"]["ap"])
