"""`cxr evaluate --method pixels|linear-probe|scratch --match`: the baselines from the command line."""

from __future__ import annotations

import json

import pytest
import torch
from evaluate_factory import make_eval_cache, make_run
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.methods.adapters import IN_SAMPLE, finetune_record

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


def test_match_copies_the_matched_evaluations_budget_and_meta_split(tmp_path):
    from evaluate_factory import SPLIT_SPEC

    from cxr_tools.engine.compare import CompareConfig, compare

    cache = make_eval_cache(tmp_path, name="nosplit")
    (cache / "meta_split.json").unlink()  # labels A..F, no saved split: `auto` has nothing to go on
    maml, sup = make_run(tmp_path, cache, "maml"), make_run(tmp_path, cache, "supervised")
    scratch = ["evaluate", "--method", "scratch", "--data", str(cache), *FAST]
    # a MAML run carries its meta-split: scratch matched with it needs no --meta-split
    res = runner.invoke(app, [*scratch, "-o", str(tmp_path / "vs-maml"), "--match", str(maml)])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "vs-maml" / "summary.json").read_text())
    assert summary["meta_split"]["test"] == ["D", "E", "F"]
    # the supervised run evaluated with an override: scratch copies that budget, its split and its episodes
    res = runner.invoke(
        app,
        ["evaluate", str(sup), "--data", str(cache), "--meta-split", SPLIT_SPEC, "--steps", "7", "--lr", "0.05", *FAST],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*scratch, "-o", str(tmp_path / "vs-sup"), "--match", str(sup)])
    assert res.exit_code == 0, res.output
    matched = json.loads((sup / "eval" / "summary.json").read_text())
    summary = json.loads((tmp_path / "vs-sup" / "summary.json").read_text())
    settings = summary["settings"]
    assert (settings["adapt_steps"], settings["inner_lr"], settings["optimiser"]) == (7, 0.05, "adam")
    assert settings["budget_source"] == f"its evaluation's settings ({sup / 'eval'})"
    assert settings["matched_run"] == str(sup)
    assert summary["episode_list_hash"] == matched["episode_list_hash"]
    result = compare(CompareConfig(inputs=(sup / "eval", tmp_path / "vs-sup")))
    budgets = {row.method: row.budget for row in result.rows}
    assert budgets == {"finetune": "steps=7 lr=0.05 head adam", "scratch": "adapt_steps=7 inner_lr=0.05 adam"}
    # an evaluation directory can be matched directly
    res = runner.invoke(app, [*scratch, "-o", str(tmp_path / "vs-eval"), "--match", str(sup / "eval")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "vs-eval" / "summary.json").read_text())["settings"]
    assert again["matched_run"] == str(sup) and again["adapt_steps"] == 7


def test_match_on_a_run_without_a_recorded_budget_says_it_uses_defaults(tmp_path, caplog):
    cache = make_eval_cache(tmp_path)
    sup = make_run(tmp_path, cache, "supervised")  # written like a run from before `extra.finetune`
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--method",
            "scratch",
            "--data",
            str(cache),
            "-o",
            str(tmp_path / "s"),
            "--match",
            str(sup),
            *FAST,
        ],
    )
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "s" / "summary.json").read_text())["settings"]
    assert settings["budget_source"].startswith("defaults") and "records no fine-tune settings" in res.stderr
    recorded = make_run(tmp_path, cache, "supervised", name="recorded", extra={"finetune": finetune_record()})
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--method",
            "scratch",
            "--data",
            str(cache),
            "-o",
            str(tmp_path / "r"),
            "--match",
            str(recorded),
            *FAST,
        ],
    )
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "r" / "summary.json").read_text())["settings"]
    assert settings["budget_source"] == "its model card" and settings["adapt_steps"] == 100
