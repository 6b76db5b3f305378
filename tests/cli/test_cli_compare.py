"""`cxr compare`: ranking, paired differences and verdict on hand-made evaluations with known numbers; refusals."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.eval.metrics import METRICS
from cxr_tools.eval.report import aggregate
from cxr_tools.eval.variance import design_from_tables

runner = CliRunner()
N = 40
CLASSES = ("D", "E")


def _patients(episodes, support=4, query=6):
    """episode_patients.csv of episodes that share no patient (each episode its own patients)."""
    rows = [
        {"episode": i, "role": role, "patient": f"e{i}-{role[0]}{k}"}
        for i in range(episodes)
        for role, count in (("support", support), ("query", query))
        for k in range(count)
    ]
    return pd.DataFrame(rows)


def _evaluation(path, method, episode_auc, *, hash_="abc123", threshold=0.5, kind="maml", **fields):
    """A real evaluation directory: episodes.csv (two classes per episode) and summary.json as cxr evaluate writes."""
    rows = []
    for i, auc in enumerate(episode_auc):
        for j, cls in enumerate(CLASSES):
            value = float(np.clip(auc + (0.02 if j else -0.02), 0, 1))
            rows.append({"episode": i, "class": cls, "positives": 3, "negatives": 3, "auc": value, "ap": value,
                         "f1": value, "precision": value, "recall": value})  # fmt: skip
    table = pd.DataFrame(rows)
    path.mkdir(parents=True)
    table.to_csv(path / "episodes.csv", index=False)
    patients = _patients(len(episode_auc))
    patients.to_csv(path / "episode_patients.csv", index=False)
    design = design_from_tables(patients, range(len(episode_auc)))
    per_class, overall = aggregate(table, CLASSES, METRICS, design)
    summary = {"name": f"run:{method}", "method": method, "method_label": method, "kind": kind,
               "episode_list_hash": hash_, "episodes": len(episode_auc), "threshold": threshold,
               "classes": list(CLASSES), "per_class": per_class, "overall": overall, "episode_list_version": 2,
               "cache_manifest_hash": "cafe", "cache_preprocessing": {"size": 32, "clahe": False},
               "settings": {"method": method, "steps": 5, "lr": 0.01}, **fields}  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def three(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.55, 0.75, N)
    best = _evaluation(tmp_path / "runA" / "eval", "maml", base + 0.15)
    close = _evaluation(tmp_path / "c", "prototype", base + 0.15 + rng.normal(0, 0.03, N))
    worst = _evaluation(tmp_path / "b", "scratch", base, kind=None)
    return tmp_path, best, close, worst, base


def test_compare_ranks_with_paired_differences_and_a_verdict(three):
    tmp, best, close, worst, base = three
    out = tmp / "cmp"
    res = runner.invoke(app, ["compare", str(worst), str(tmp / "runA"), str(close), "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "comparison.csv")
    order = list(table["name"])
    a = base + 0.15
    c = pd.read_csv(close / "episodes.csv").groupby("episode")["auc"].mean().to_numpy()
    assert order[-1] == "run:scratch" and set(order[:2]) == {"run:maml", "run:prototype"}
    assert table["mean"].is_monotonic_decreasing
    top = order[0]
    top_values = a if top == "run:maml" else c
    scratch = table[table["name"] == "run:scratch"].iloc[0]
    assert scratch["diff_vs_reference"] == pytest.approx(np.mean(base - top_values))
    # episodes that share no patient: the variance model's test is the paired t-test
    assert scratch["p_raw"] == pytest.approx(stats.ttest_rel(base, top_values).pvalue, rel=0.05)
    assert scratch["p_value"] >= scratch["p_raw"] and scratch["budget"] == "steps=5 lr=0.01"
    assert bool(scratch["significant"]) and scratch["diff_high"] < 0
    runner_up = table.iloc[1]
    assert runner_up["significant"] in (False, np.False_)  # ±0.03 noise around the same mean
    assert res.stdout.index(top) < res.stdout.index("scratch")
    verdict = [line for line in res.stdout.splitlines() if "ranks first" in line or "is best" in line]
    assert verdict and "not significantly better" in verdict[0] and "(p < 0.001 Holm)" in verdict[0]
    assert not re.search(r"p = 0\.?0*(?![\d.])", res.stdout)  # never "p = 0.0"
    md = (out / "comparison.md").read_text()
    assert "| 1 | " + top in md and "Verdict" in md and "abc123" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "comparison.json").read_text())["rows"][0]["name"] == top

    again = runner.invoke(app, ["compare", str(worst), str(best), "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    forced = runner.invoke(app, ["compare", str(worst), str(best), "-o", str(out), "--overwrite", "--json"])
    assert forced.exit_code == 0, forced.output
    data = json.loads(forced.stdout)
    assert [r["name"] for r in data["rows"]] == ["run:maml", "run:scratch"]
    assert data["verdict"].startswith("run:maml is best: AUC ")


def test_compare_refuses_different_episode_lists_naming_them(three):
    tmp, best, _, _, base = three
    other = _evaluation(tmp / "other", "finetune-head", base, hash_="fff999")
    res = runner.invoke(app, ["compare", str(best), str(other)])
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert "\n" not in line and "different episode lists" in line
    assert str(best) in line and "abc123" in line and str(other) in line and "fff999" in line


def test_compare_bad_inputs(three):
    tmp, best, close, _worst, base = three
    res = runner.invoke(app, ["compare", str(tmp / "missing")])
    assert res.exit_code == 1 and "does not exist" in res.stderr
    (tmp / "empty").mkdir()
    res = runner.invoke(app, ["compare", str(tmp / "empty")])
    assert res.exit_code == 1 and "holds no evaluation" in res.stderr and "cxr evaluate" in res.stderr
    res = runner.invoke(app, ["compare", str(best), "--metric", "accuracy"])
    assert res.exit_code == 1 and "Unknown metric" in res.stderr
    res = runner.invoke(app, ["compare", str(best), str(best)])
    assert res.exit_code == 1 and "twice" in res.stderr
    t9 = _evaluation(tmp / "t9", "finetune-all", base, threshold=0.9)
    res = runner.invoke(app, ["compare", str(best), str(t9), "--metric", "f1"])
    assert res.exit_code == 1 and "threshold" in res.stderr
    res = runner.invoke(app, ["compare", str(best), str(t9), "--metric", "auc"])  # threshold-free: fine
    assert res.exit_code == 0, res.output
    single = runner.invoke(app, ["compare", str(close)])
    assert single.exit_code == 0 and "only method" in single.stdout


def test_thresholded_metrics_are_shown_with_their_rule_and_never_pooled_across_rules(three):
    tmp, best, _, _, base = three
    a = _evaluation(tmp / "s1", "maml", base, threshold="support")
    b = _evaluation(tmp / "s2", "prototype", base + 0.1, threshold="support")
    res = runner.invoke(app, ["compare", str(a), str(b), "-o", str(tmp / "cmp"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["threshold"] == "support" and list(data["rows"][0]["others"]) == ["auc", "ap", "f1", "precision",
                                                                                   "recall"]  # fmt: skip
    # 3 positives of 6 per class: calling everything positive scores precision 0.5, recall 1, F1 2/3
    assert data["all_positive"] == pytest.approx({"f1": 2 / 3, "precision": 0.5, "recall": 1.0})
    md = (tmp / "cmp" / "comparison.md").read_text()
    assert "| method | AUC | AP | F1@support | precision@support | recall@support |" in md
    assert "every query called positive" in md
    table = runner.invoke(app, ["compare", str(a), str(b)])
    assert "F1@support" in table.stdout and "never on the queries" in table.stdout
    # a support-rule and a 0.5 evaluation: AUC and AP compared, the thresholded metrics left out (and said so)
    mixed = runner.invoke(app, ["compare", str(a), str(best), "--json"])
    assert mixed.exit_code == 0, mixed.output
    assert list(json.loads(mixed.stdout)["rows"][0]["others"]) == ["auc", "ap"]
    assert json.loads(mixed.stdout)["threshold"] is None
    assert "different threshold rules" in runner.invoke(app, ["compare", str(a), str(best)]).stdout
    refused = runner.invoke(app, ["compare", str(a), str(best), "--metric", "f1"])
    assert refused.exit_code == 1 and "support" in refused.stderr and "0.5" in refused.stderr
