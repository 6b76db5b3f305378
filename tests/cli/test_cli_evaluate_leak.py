"""`cxr evaluate` on leaking lineages: one-line refusal with exit 1; --allow-leak evaluates and shows the leak."""

from __future__ import annotations

import json

import pytest
import torch
from evaluate_factory import make_eval_cache, make_run
from typer.testing import CliRunner

from cxr_tools.cli.app import app

torch.set_num_threads(1)
runner = CliRunner()
FAST = ["--episodes", "2", "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots", "--steps", "3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_leak")
    cache = make_eval_cache(tmp)
    leaky = make_run(tmp, cache, "supervised", name="leaky", labels=("A", "D"))
    old = make_run(tmp, cache, "maml", name="old", lineage=False)
    return tmp, cache, leaky, old


def _one_line_error(res, *needles):
    assert res.exit_code == 1, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Leak: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_leaking_run_is_refused_in_one_line_naming_run_and_class(env):
    _, cache, leaky, _ = env
    _one_line_error(
        runner.invoke(app, ["evaluate", str(leaky), "--data", str(cache), *FAST]), "'leaky'", "D", "--allow-leak"
    )
    assert not (leaky / "eval").exists()


def test_a_run_without_lineage_is_refused_with_retrain_or_allow_leak(env):
    _, cache, _, old = env
    _one_line_error(
        runner.invoke(app, ["evaluate", str(old), "--data", str(cache), *FAST]),
        "no lineage record",
        "Retrain",
        "--allow-leak",
    )


def test_allow_leak_evaluates_and_prints_the_leak(env):
    _, cache, leaky, _ = env
    res = runner.invoke(app, ["evaluate", str(leaky), "--data", str(cache), *FAST, "--allow-leak"])
    assert res.exit_code == 0, res.output
    assert "LEAK (--allow-leak)" in res.stdout and "'leaky'" in res.stdout
    summary = json.loads((leaky / "eval" / "summary.json").read_text())
    assert "meta-test class(es) D" in summary["leak"]


def test_another_pool_seed_than_the_runs_mixes_its_patients_into_the_meta_test_pool(env, tmp_path):
    tmp, cache, _, _ = env
    clean = make_run(tmp, cache, "maml", name="clean")  # recorded: the pools of seed 0
    args = ["evaluate", str(clean), "--data", str(cache), *FAST, "-o", str(tmp_path / "e")]
    _one_line_error(runner.invoke(app, [*args, "--pool-seed", "1"]), "'clean'", "patient(s) of the meta-test pool")
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["leak"] is None
