"""`cxr evaluate`: every interval comes from the variance model and contains its estimate, for every metric."""

from __future__ import annotations

import json

import pandas as pd
import torch
from evaluate_factory import make_eval_cache
from typer.testing import CliRunner

from cxr_tools.cli.app import app

torch.set_num_threads(1)
runner = CliRunner()


def test_evaluate_intervals_contain_their_estimates_and_count_patients(tmp_path):
    cache = make_eval_cache(tmp_path)
    out = tmp_path / "scratch"
    args = [
        "evaluate",
        "--method",
        "scratch",
        "--backbone",
        "conv4-tiny",
        "--data",
        str(cache),
        "-o",
        str(out),
        "--episodes",
        "6",
        "--shots",
        "2",
        "--queries",
        "3",
        "--device",
        "cpu",
        "--no-plots",
        "--steps",
        "2",
        "--adapt-steps",
        "1",
        "--inner-lr",
        "0.01",
    ]
    res = runner.invoke(app, args, terminal_width=200)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    patients = pd.read_csv(out / "episode_patients.csv", dtype={"patient": str})
    assert set(patients["role"]) == {"support", "query"}
    assert summary["variance"]["patients"] == patients["patient"].nunique()
    assert summary["variance"]["episodes"] == 6
    scores = pd.read_csv(out / "scores.csv", dtype={"patient": str})
    query = patients[patients["role"] == "query"]
    assert set(query["patient"]) == set(scores["patient"])  # the design's query patients are the scored ones
    table = pd.read_csv(out / "episodes.csv", dtype={"class": str})
    for metric in summary["metrics"]:
        estimates = [summary["overall"][metric], *(v[metric] for v in summary["per_class"].values())]
        for est in estimates:
            if est["mean"] is None:
                continue
            if est["n"] < 2:  # one episode: no interval, and the summary says so
                assert est["low"] is None and est["interval"] == "none"
                continue
            assert est["low"] <= est["mean"] <= est["high"], (metric, est)
            assert est["interval"] in ("episodes+patients", "none")
    for cls, values in summary["per_class"].items():
        eps = table.loc[table["class"] == cls, "episode"].unique()
        assert values["auc"]["n"] == len(eps)
        assert values["auc"]["patients"] == patients.loc[patients["episode"].isin(eps), "patient"].nunique()
    auc = summary["overall"]["auc"]
    assert f"{auc['mean']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" in res.stdout
    assert "one variance model" in res.stdout
