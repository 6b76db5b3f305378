"""`cxr evaluate` on leaking lineages: one-line refusal with exit 1; --allow-leak evaluates and shows the leak."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error
from evaluate_factory import SPLIT, make_eval_cache, make_run
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.splits.meta import meta_split_pools
from cxr_tools.data.splits.patients import patients_of
from cxr_tools.models import create_model, save_model_dir
from cxr_tools.models.lineage import load_patient_sets, write_lineage

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


def _leak_error(res, *needles):
    assert_one_line_error(res, *needles, prefix="Error: Leak: ")


def test_a_leaking_run_is_refused_in_one_line_naming_run_and_class(env):
    _, cache, leaky, _ = env
    _leak_error(
        runner.invoke(app, ["evaluate", str(leaky), "--data", str(cache), *FAST]), "'leaky'", "D", "--allow-leak"
    )
    assert not (leaky / "eval").exists()


def test_a_run_without_lineage_is_refused_with_retrain_or_allow_leak(env):
    _, cache, _, old = env
    _leak_error(
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
    _leak_error(runner.invoke(app, [*args, "--pool-seed", "1"]), "'clean'", "patient(s) of the meta-test pool")
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["leak"] is None


def test_a_class_spelled_differently_is_still_a_leak(env):
    tmp, cache, _, _ = env
    # a Siamese run trained on another cache's spelling of the classes; the meta-test class here is "D"
    run = make_run(tmp, cache, "siamese", name="spelled", labels=("a", "d "))
    _leak_error(runner.invoke(app, ["evaluate", str(run), "--data", str(cache), *FAST]), "'spelled'", "class(es) D")


def test_patient_ids_written_without_padding_are_still_a_leak(env):
    """A parent trained on the meta-test pool's patients as another source writes them ("7" for "00007")."""
    tmp, cache, _, _ = env
    reader = open_cache(cache)
    test_pool = meta_split_pools(reader.index, reader.labels, SPLIT, seed=0)["test"]
    unpadded = [p.lstrip("0") or "0" for p in patients_of(reader.index, test_pool)]
    assert unpadded != patients_of(reader.index, test_pool)
    parent = tmp / "unpadded"
    meta = {"training": "supervised", "labels": ["A"], "cache_manifest_hash": reader.manifest_hash}
    record = write_lineage(parent / "model", meta, run=parent, patients=unpadded)
    save_model_dir(create_model("conv4-tiny", num_classes=1), {**meta, "lineage": record}, parent / "model")
    child = make_run(tmp, cache, "siamese", name="child-of-unpadded", labels=("A", "B"))
    meta = json.loads((child / "model" / "model.json").read_text())
    kept = load_patient_sets(child / "model")[meta["lineage"]["patients"]["sha256"]]
    meta["lineage"] = write_lineage(child / "model", meta, run=child, patients=kept, parents=[parent])
    (child / "model" / "model.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["evaluate", str(child), "--data", str(cache), *FAST])
    _leak_error(res, "ancestor run 'unpadded'", "patient(s) of the meta-test pool", "compared canonically")
