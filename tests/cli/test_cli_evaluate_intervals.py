"""`cxr evaluate` reports both intervals: over episodes (Student t) and the patient-cluster bootstrap."""

from __future__ import annotations

import json

import pandas as pd
import torch
from evaluate_factory import make_eval_cache
from typer.testing import CliRunner

from cxr_tools.cli.app import app

torch.set_num_threads(1)
runner = CliRunner()


def test_evaluate_keeps_both_intervals_and_headlines_the_wider(tmp_path):
    cache = make_eval_cache(tmp_path)
    out = tmp_path / "scratch"
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("evaluate:\n  bootstrap: 300\n")
    args = ["evaluate", "--method", "scratch", "--backbone", "conv4-tiny", "--data", str(cache), "-o", str(out),
            "--episodes", "4", "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots", "--steps", "2",
            "--adapt-steps", "1", "--inner-lr", "0.01", "--config", str(cfg)]  # fmt: skip
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bootstrap"]["replicates"] == 300 and summary["bootstrap"]["unit"] == "patient"
    scores = pd.read_csv(out / "scores.csv", dtype={"patient": str})
    assert summary["bootstrap"]["patients"] == scores["patient"].nunique()
    for est in [summary["overall"]["auc"], *(v["auc"] for v in summary["per_class"].values())]:
        boot_width = est["bootstrap_high"] - est["bootstrap_low"]
        if est["episode_ci95"] is None:  # one episode: only the bootstrap interval is defined
            assert est["interval"] == "bootstrap"
        else:
            assert est["interval"] == ("bootstrap" if boot_width > 2 * est["episode_ci95"] else "episode")
        assert est["low"] <= est["mean"] <= est["high"] and est["ci95"] >= est["mean"] - est["low"] - 1e-12
    auc = summary["overall"]["auc"]
    assert f"patient bootstrap [{auc['bootstrap_low']:.3f}, {auc['bootstrap_high']:.3f}]" in res.stdout
    assert f"{auc['mean']:.3f} ± {auc['ci95']:.3f}" in res.stdout
