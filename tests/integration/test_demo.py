"""`cxr demo --quick`: the whole pipeline runs and ends in a comparison of every method on the same episodes."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()


@pytest.mark.slow
def test_quick_demo_compares_all_methods(tmp_path):
    work = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--workdir", str(work), "--episodes", "6", "--threads", "1"])
    assert res.exit_code == 0, res.output
    names = ("supervised:finetune-head", "siamese:prototype", "maml:maml", "maml-siamese-init:maml", "scratch",
             "pixels", "supervised:linear-probe")  # fmt: skip
    for name in names:
        assert name in res.stdout
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", res.stdout)  # estimates with their [low, high]
    assert "is best" in res.stdout or "ranks first" in res.stdout
    comparison = json.loads((work / "compare" / "comparison.json").read_text())
    assert len(comparison["rows"]) == 7  # the supervised runs of two seeds form one row
    # threshold-free metrics first, the thresholded ones named with the support rule they were measured at
    assert comparison["threshold"] == "support" and list(comparison["rows"][0]["others"])[:2] == ["auc", "ap"]
    assert "F1@support" in res.stdout.replace("\n", "") and "chosen per class on its support set" in res.stdout
    grouped = next(r for r in comparison["rows"] if r["name"].startswith("supervised:finetune-head"))
    assert grouped["seeds"] == [0, 1]
    hashes = {json.loads(p.read_text())["episode_list_hash"] for p in work.rglob("summary.json")}
    assert len(hashes) == 1  # every method on the same episodes
    scratch = json.loads((work / "eval-scratch" / "summary.json").read_text())["settings"]
    maml = json.loads((work / "runs" / "maml" / "model" / "model.json").read_text())["extra"]["maml"]
    assert (scratch["adapt_steps"], scratch["inner_lr"]) == (maml["adapt_steps"], maml["inner_lr"])
    assert scratch["matched_run"] == str(work / "runs" / "maml")
    # a second run refuses to clobber the work directory
    again = runner.invoke(app, ["demo", "--quick", "--workdir", str(work)])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
