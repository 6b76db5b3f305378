"""`cxr evaluate --seen-ways`: generalized few-shot episodes (MetaChest) end to end on a phantom cache.

What generalized evaluation promises: ``--seen-ways 2 --ways 2`` gives 4-class episodes (2 meta-train + 2
meta-test classes) whose images carry no label outside the episode's classes, whose negatives carry no finding,
whose patients stay apart (support / query, and from everything the run trained on), with seen / unseen /
harmonic results in summary.json and in the printed table; ``cxr compare`` ranks on them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import assert_one_line_error
from evaluate_factory import SPLIT, make_eval_cache, make_run
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.splits.meta import meta_split_pools
from cxr_tools.models.lineage import load_patient_sets

torch.set_num_threads(1)
runner = CliRunner()
FAST = ["--episodes", "4", "--shots", "2", "--queries", "3", "--device", "cpu", "--no-plots", "--steps", "5"]
GENERALIZED = ["--seen-ways", "2", "--ways", "2"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generalized")
    cache = make_eval_cache(tmp, n=300)  # enough films of each meta-train finding alone for 2 seen ways
    run = make_run(tmp, cache, "supervised")
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(cache), *FAST, *GENERALIZED], terminal_width=220)
    assert res.exit_code == 0, res.output
    return tmp, cache, run, res.stdout


def test_episodes_have_two_seen_and_two_unseen_classes_and_no_foreign_label(evaluated):
    _, cache, run, _ = evaluated
    reader = open_cache(cache)
    raw = reader.raw_labels()
    names = list(reader.labels)
    data = json.loads((run / "eval" / "episodes.json").read_text())
    assert data["seen_ways"] == 2 and len(data["episodes"]) == 4
    for ep in data["episodes"]:
        classes, seen = ep["classes"], ep["seen"]
        assert len(classes) == 4 and len(seen) == 2
        assert set(seen) <= set(SPLIT.train) and set(classes) - set(seen) <= set(SPLIT.test)
        outside = [names.index(c) for c in names if c not in classes]
        rows = np.asarray(ep["support_rows"] + ep["query_rows"])
        carried = (raw[rows][:, outside] == 1) | (raw[rows][:, outside] == -1)
        assert not carried.any(), f"an image of episode {classes} carries a label outside it"
        inside = raw[rows][:, [names.index(c) for c in classes]] == 1
        negatives = rows[~inside.any(axis=1)]
        assert len(negatives) == 2 + 3  # one slot of negatives: shots + queries, none carrying any finding
        assert not ((raw[negatives] == 1) | (raw[negatives] == -1)).any()
        for j in range(4):  # every class has at least `shots` support and `queries` query positives
            assert (raw[ep["support_rows"], names.index(classes[j])] == 1).sum() >= 2
            assert (raw[ep["query_rows"], names.index(classes[j])] == 1).sum() >= 3


def test_patients_stay_disjoint_between_sides_and_from_the_run(evaluated):
    _, cache, run, _ = evaluated
    reader = open_cache(cache)
    pids = reader.index["patient_id"].astype(str).to_numpy()
    pool = meta_split_pools(reader.index, reader.labels, SPLIT, seed=0)["test"]
    trained = {p for ps in load_patient_sets(run / "model").values() for p in ps}
    assert trained, "the run records the patients it trained on"
    for ep in json.loads((run / "eval" / "episodes.json").read_text())["episodes"]:
        support, query = set(pids[ep["support_rows"]]), set(pids[ep["query_rows"]])
        assert not support & query
        assert np.isin(ep["support_rows"] + ep["query_rows"], pool).all()
        assert not (support | query) & trained


def test_summary_and_table_report_seen_unseen_and_their_harmonic_mean(evaluated):
    _, _, run, stdout = evaluated
    summary = json.loads((run / "eval" / "summary.json").read_text())
    gen = summary["generalized"]
    assert (
        summary["seen_ways"] == 2
        and gen["seen_classes"] == ["A", "B"]
        and set(gen["unseen_classes"]) <= {"D", "E", "F"}
    )
    for part in ("seen", "unseen", "harmonic"):
        for metric in summary["metrics"]:
            record = gen[part][metric]
            assert {"mean", "low", "high", "se", "df", "n"} <= set(record)
            assert record["low"] <= record["mean"] <= record["high"]
    table = pd.read_csv(run / "eval" / "episodes.csv")
    seen = table[table["group"] == "seen"].groupby("episode")["auc"].mean().mean()
    unseen = table[table["group"] == "unseen"].groupby("episode")["auc"].mean().mean()
    assert gen["seen"]["auc"]["mean"] == pytest.approx(seen)
    assert gen["unseen"]["auc"]["mean"] == pytest.approx(unseen)
    assert gen["harmonic"]["auc"]["mean"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert set(summary["per_class"]) >= {"A", "B"}  # seen classes are reported per class too
    for label in ("seen classes", "unseen classes", "harmonic mean", "A (seen)"):
        assert label in stdout
    h = gen["harmonic"]["auc"]
    assert f"{h['mean']:.3f} [{h['low']:.3f}, {h['high']:.3f}]" in stdout


def test_seen_classes_of_a_supervised_run_are_scored_by_its_trained_head(evaluated):
    _, cache, run, _ = evaluated
    from cxr_tools.models import load_model_dir
    from cxr_tools.models.inputs import to_model_input

    model, meta = load_model_dir(run)
    scores = pd.read_csv(run / "eval" / "scores.csv")
    seen = scores[scores["class"].isin(["A", "B"])].drop_duplicates(["row", "class"]).head(6)
    images = open_cache(cache).read(np.sort(seen["row"].unique()))
    with torch.no_grad():
        probs = torch.sigmoid(model.eval()(to_model_input(images, meta, "cpu"))).numpy()
    by_row = dict(zip(np.sort(seen["row"].unique()), probs, strict=True))
    for _, r in seen.iterrows():
        assert r["score"] == pytest.approx(float(by_row[r["row"]][meta["labels"].index(r["class"])]), abs=1e-5)


def test_compare_ranks_on_the_harmonic_mean_and_refuses_it_on_standard_evaluations(evaluated):
    tmp, cache, run, _ = evaluated
    pixels = tmp / "pixels"
    args = ["evaluate", "--method", "pixels", "--data", str(cache), "-o", str(pixels), *FAST, *GENERALIZED]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = runner.invoke(app, ["compare", str(run / "eval"), str(pixels), "--metric", "auc-harmonic", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    means = {r["name"]: r["mean"] for r in data["rows"]}
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert means[summary["name"]] == pytest.approx(summary["generalized"]["harmonic"]["auc"]["mean"])
    standard = [tmp / "standard-1", tmp / "standard-2"]
    for out_dir in standard:
        res = runner.invoke(app, ["evaluate", "--method", "pixels", "--data", str(cache), "-o", str(out_dir), *FAST])
        assert res.exit_code == 0, res.output
    refused = runner.invoke(app, ["compare", *map(str, standard), "--metric", "auc-seen"])
    assert_one_line_error(refused, "needs generalized evaluations", "--seen-ways")


def test_a_protonet_run_scores_seen_classes_against_its_base_prototypes(evaluated):
    tmp, cache, _, _ = evaluated
    from cxr_tools.data.splits.meta import meta_split_pools
    from cxr_tools.methods.protonet import MeanDistanceScorer, base_prototypes, distances
    from cxr_tools.models import load_model_dir

    run = make_run(tmp, cache, "protonet", ways=4)
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(cache), *FAST, *GENERALIZED])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["settings"]["rule"] == "mean-distance"
    assert summary["settings"]["seen_classes"].startswith("base prototypes")

    model, meta = load_model_dir(run)
    reader = open_cache(cache)
    train = meta_split_pools(reader.index, reader.labels, SPLIT, seed=0)["train"]
    base = base_prototypes(model, meta, reader, train, ["A", "B"])
    support = torch.randn(6, base.shape[1])
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1.0]])
    scorer = MeanDistanceScorer(support, targets, fixed=base)
    assert torch.equal(scorer.protos[2:], base)  # the seen columns' prototypes are the base ones
    expected = torch.sigmoid(scorer.tau - distances(support, base))
    assert torch.allclose(scorer.support_scores(support, targets)[:, 2:], expected)
