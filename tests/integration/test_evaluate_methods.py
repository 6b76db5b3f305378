"""cxr evaluate end to end on a real tiny cache: every method (the pixel and linear-probe baselines and scratch with
a matched budget included), same episodes, files, consistency, refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from evaluate_factory import SPLIT, make_eval_cache, make_run
from interrupting_progress import Interrupt

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.splits.meta import meta_split_pools
from cxr_tools.engine.compare import CompareConfig, compare
from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
from cxr_tools.errors import ConfigError, DataError, ModelError, OutputExistsError
from cxr_tools.eval.metrics import mean_ci
from cxr_tools.eval.variance import design_from_tables, estimate
from cxr_tools.runtime.progress import RecordingProgress

torch.set_num_threads(1)
EPISODES = 6
COMMON = {"episodes": EPISODES, "shots": 2, "queries": 3, "device": "cpu", "steps": 15, "pairs": 60}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    cache = make_eval_cache(tmp)
    runs = {kind: make_run(tmp, cache, kind) for kind in ("maml", "siamese", "supervised")}
    results = {kind: evaluate(EvaluateConfig(data=cache, run=run, **COMMON)) for kind, run in runs.items()}
    progress = RecordingProgress()
    results["scratch"] = evaluate(
        EvaluateConfig(data=cache, method="scratch", output=tmp / "scratch", match=runs["maml"], **COMMON), progress
    )
    results["pixels"] = evaluate(EvaluateConfig(data=cache, method="pixels", output=tmp / "pixels", **COMMON))
    results["linear-probe"] = evaluate(EvaluateConfig(data=cache, run=runs["supervised"], method="linear-probe",
                                                      **COMMON))  # fmt: skip
    return tmp, cache, runs, results, progress


def test_every_method_writes_its_evaluation(setup):
    _tmp, cache, runs, results, progress = setup
    assert {r.method_label for r in results.values()} == {
        "maml", "prototype", "finetune-head", "scratch", "pixels", "linear-probe"
    }  # fmt: skip
    for kind, result in results.items():
        out = result.output
        if kind in runs:
            assert out == runs[kind] / "eval"
        for name in ("summary.json", "episodes.csv", "scores.csv", "episodes.json"):
            assert (out / name).is_file(), (kind, name)
        for plot in ("roc.png", "auc_per_class.png", "confusion.png", "overall.png"):
            assert (out / "plots" / plot).stat().st_size > 2000, (kind, plot)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["episodes"] == EPISODES and summary["ways"] == 2 and summary["threshold"] == "support"
        assert "support set" in summary["threshold_rule"] and summary["metrics"][:2] == ["auc", "ap"]
        assert summary["cache_manifest_hash"] == open_cache(cache).manifest_hash
        assert set(summary["overall"]) == {"auc", "ap", "f1", "precision", "recall"}
        assert summary["seconds"] > 0
    assert progress.done("evaluate") == EPISODES
    assert results["linear-probe"].output == runs["supervised"] / "eval-linear-probe"


def test_baselines_record_what_they_fitted(setup):
    _tmp, _, runs, results, _ = setup
    pixels = json.loads((results["pixels"].output / "summary.json").read_text())
    assert pixels["name"] == "pixels" and pixels["run"] is None and pixels["architecture"] is None
    assert pixels["settings"]["features"] == "pixels" and pixels["settings"]["classifier"] == "logistic-regression"
    probe = json.loads((results["linear-probe"].output / "summary.json").read_text())
    assert probe["name"] == "supervised:linear-probe" and probe["settings"]["features"] == "backbone"
    scratch = json.loads((results["scratch"].output / "summary.json").read_text())["settings"]
    # the MAML run's budget (make_run: inner_lr 0.1, 2 steps), copied with the run's path, on its architecture
    assert (scratch["adapt_steps"], scratch["inner_lr"], scratch["optimiser"]) == (2, 0.1, "sgd")
    assert scratch["matched_run"] == str(runs["maml"]) and scratch["architecture"] == "conv4-tiny"
    for result in (results["pixels"], results["linear-probe"]):
        assert 0.5 < result.overall["auc"]["mean"] <= 1.0  # the blobs of the tiny cache are learnable


def test_scratch_without_a_budget_is_refused_and_a_run_gives_its_own(setup, tmp_path):
    _tmp, cache, runs, _, _ = setup
    with pytest.raises(ConfigError, match=r"--adapt-steps and --inner-lr not given.*--match RUN"):
        evaluate(EvaluateConfig(data=cache, method="scratch", output=tmp_path / "s", backbone="conv4-tiny", **COMMON))
    with pytest.raises(ConfigError, match="siamese run adapts without training"):
        evaluate(EvaluateConfig(data=cache, method="scratch", output=tmp_path / "s", match=runs["siamese"], **COMMON))
    with pytest.raises(ConfigError, match="--match applies to --method scratch"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], match=runs["maml"], output=tmp_path / "s", **COMMON))
    assert not (tmp_path / "s").exists()
    # scratch on a run without --match: that run's budget, recorded with its path
    own = evaluate(EvaluateConfig(data=cache, run=runs["maml"], method="scratch", plots=False, **COMMON))
    settings = json.loads((own.output / "summary.json").read_text())["settings"]
    assert (settings["adapt_steps"], settings["matched_run"]) == (2, str(runs["maml"]))
    assert own.output == runs["maml"] / "eval-scratch"


def test_same_episode_list_for_every_method(setup):
    _, _, _, results, _ = setup
    hashes = {r.episode_list_hash for r in results.values()}
    assert len(hashes) == 1
    lists = {(r.output / "episodes.json").read_text() for r in results.values()}
    assert len(lists) == 1


def test_evaluation_reads_only_meta_test_classes_and_images(setup):
    _, cache, _, results, _ = setup
    reader = open_cache(cache)
    pool = set(meta_split_pools(reader.index, reader.labels, SPLIT, seed=0)["test"].tolist())
    episodes = json.loads((results["maml"].output / "episodes.json").read_text())["episodes"]
    for ep in episodes:
        assert set(ep["classes"]) <= set(SPLIT.test)
        assert set(ep["support_rows"]) | set(ep["query_rows"]) <= pool
        assert not set(ep["support_rows"]) & set(ep["query_rows"])
    scores = pd.read_csv(results["supervised"].output / "scores.csv", dtype={"class": str})
    assert set(scores["row"]) <= pool and set(scores["class"]) <= set(SPLIT.test)
    # and the Siamese pair set too
    assert results["siamese"].pairs["pairs"] == 60 and results["siamese"].pairs["positives"] == 30


def test_summary_numbers_match_episodes_csv(setup):
    _, _, _, results, _ = setup
    for result in results.values():
        table = pd.read_csv(result.output / "episodes.csv", dtype={"class": str})
        summary = json.loads((result.output / "summary.json").read_text())
        assert len(table) == EPISODES * 2 and table["episode"].nunique() == EPISODES
        for cls, rows in table.groupby("class"):
            est = mean_ci(rows["auc"].to_numpy())
            assert summary["per_class"][cls]["auc"]["mean"] == pytest.approx(est.mean)
            assert summary["per_class"][cls]["auc"]["n"] == est.n
        episode_auc = table.groupby("episode")["auc"].mean().to_numpy()
        est = mean_ci(episode_auc)
        assert summary["overall"]["auc"]["mean"] == pytest.approx(est.mean)
        overall = summary["overall"]["auc"]
        # the interval recomputes from the files alone: the variance model on episode_patients.csv
        patients = pd.read_csv(result.output / "episode_patients.csv", dtype={"patient": str})
        again = estimate(episode_auc[None], design_from_tables(patients, range(EPISODES)), seeded=False)
        assert (overall["low"], overall["high"]) == pytest.approx((again.low, again.high))
        assert overall["interval"] == "episodes+patients" and overall["low"] <= overall["mean"] <= overall["high"]
        # recall at the episode's own (support-chosen) threshold, recomputed from the stored query scores
        scores = pd.read_csv(result.output / "scores.csv", dtype={"class": str})
        first = scores[(scores["episode"] == 0) & (scores["class"] == table.iloc[0]["class"])]
        assert (first["threshold"] == table.iloc[0]["threshold"]).all()
        pred = first["score"] >= table.iloc[0]["threshold"]
        tp = int((pred & (first["target"] == 1)).sum())
        recall = tp / int((first["target"] == 1).sum())
        assert table.iloc[0]["recall"] == pytest.approx(recall)


def test_siamese_pairs_and_compare_ranks_the_four_methods(setup, tmp_path):
    _tmp, _, runs, results, _ = setup
    pairs = results["siamese"].pairs
    assert 0.0 <= pairs["pair_auc"] <= 1.0 and pairs["threshold"] == 0.6
    inputs = (runs["maml"], runs["siamese"], runs["supervised"] / "eval", results["scratch"].output,
              results["pixels"].output, results["linear-probe"].output)  # fmt: skip
    result = compare(CompareConfig(inputs=inputs, output=tmp_path / "cmp"))
    means = [row.mean for row in result.rows]
    assert means == sorted(means, reverse=True)
    by_label = {r.name: r for r in results.values()}
    for row in result.rows:
        assert row.mean == pytest.approx(by_label[row.name].overall["auc"]["mean"])
    assert result.rows[0].diff is None and all(r.diff <= 0 for r in result.rows[1:])
    assert result.verdict.startswith(result.rows[0].name)
    for name in ("comparison.csv", "comparison.md", "comparison.png", "comparison.json"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0


def test_write_once_and_restart_of_an_interrupted_evaluation(setup):
    _, cache, runs, results, _ = setup
    with pytest.raises(OutputExistsError, match="--overwrite"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], **COMMON))
    again = evaluate(EvaluateConfig(data=cache, run=runs["maml"], overwrite=True, plots=False, **COMMON))
    assert again.overall == results["maml"].overall  # deterministic
    (again.output / "summary.json").unlink()  # an interrupted evaluation is restarted without --overwrite
    third = evaluate(EvaluateConfig(data=cache, run=runs["maml"], plots=False, **COMMON))
    assert third.episode_list_hash == again.episode_list_hash
    foreign = runs["maml"].parent / "not-an-evaluation"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], output=foreign, **COMMON))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_other_methods_on_one_run_go_to_their_own_folder(setup):
    _, cache, runs, _, _ = setup
    result = evaluate(EvaluateConfig(data=cache, run=runs["supervised"], method="prototype", plots=False, **COMMON))
    assert result.output == runs["supervised"] / "eval-prototype"
    assert result.name == "supervised:prototype"


def test_refusals(setup, tmp_path):
    _tmp, cache, runs, _, _ = setup
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelError, match="never finished training"):
        evaluate(EvaluateConfig(data=cache, run=tmp_path / "unfinished"))
    small = make_eval_cache(tmp_path, name="cache48", size=48)
    with pytest.raises(ModelError, match="32 px"):
        evaluate(EvaluateConfig(data=small, run=runs["maml"], output=tmp_path / "x"))
    other_prep = make_run(tmp_path, cache, "supervised", name="prep", preprocessing={"size": 32, "clahe": True})
    with pytest.raises(ModelError, match="clahe"):
        evaluate(EvaluateConfig(data=cache, run=other_prep))
    labels = make_run(tmp_path, cache, "supervised", name="labels", labels=("A", "Zzz"))
    with pytest.raises(ModelError, match="Zzz"):
        evaluate(EvaluateConfig(data=cache, run=labels))
    leak = make_run(tmp_path, cache, "supervised", name="leak", labels=("A", "D"))
    with pytest.raises(DataError, match="meta-test class"):
        evaluate(EvaluateConfig(data=cache, run=leak))
    with pytest.raises(DataError, match=r"Too few patients.*[DEF]: \d+ patients"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], shots=40, output=tmp_path / "y"))
    with pytest.raises(ModelError, match="--ways 2"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], ways=3, shots=2, queries=3, output=tmp_path / "z"))
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_compare_refuses_different_episode_lists(setup, tmp_path):
    _, cache, runs, results, _ = setup
    other = evaluate(
        EvaluateConfig(
            data=cache, method="pixels", output=tmp_path / "seed1", seed=1, plots=False,
            **{**COMMON, "episodes": 2},
        )
    )  # fmt: skip
    assert other.episode_list_hash != results["maml"].episode_list_hash
    with pytest.raises(DataError, match=rf"different episode lists.*{other.episode_list_hash}"):
        compare(CompareConfig(inputs=(runs["maml"], tmp_path / "seed1")))
    with pytest.raises(DataError, match="threshold"):
        t = evaluate(
            EvaluateConfig(data=cache, method="pixels", output=tmp_path / "t9", threshold=0.9, plots=False, **COMMON)
        )  # fmt: skip
        compare(CompareConfig(inputs=(runs["maml"], t.output), metric="f1"))


def test_an_interrupted_evaluation_resumes_to_the_same_results(setup, tmp_path, caplog):
    _, cache, runs, results, _ = setup
    out = tmp_path / "eval"
    config = EvaluateConfig(data=cache, run=runs["maml"], output=out, plots=False, **COMMON)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, Interrupt("evaluate", after=4))
    assert not (out / "summary.json").exists()
    assert len((out / "progress.jsonl").read_text().splitlines()) == 4
    with open(out / "progress.jsonl", "a") as fh:  # what kill -9 during a write can leave
        fh.write('{"episode": 4, "reco')
    progress = RecordingProgress()
    with caplog.at_level("INFO", logger="cxr_tools"):
        resumed = evaluate(config, progress)
    assert "4 episode(s) already done" in caplog.text
    assert progress.done("evaluate") == EPISODES
    reference = results["maml"].output
    for name in ("episodes.csv", "scores.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert resumed.overall == results["maml"].overall
    assert not (out / "progress.jsonl").exists() and not (out / "progress.json").exists()


def test_an_interrupted_evaluation_with_other_settings_starts_over(setup, tmp_path, caplog):
    _, cache, runs, _, _ = setup
    out = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            EvaluateConfig(data=cache, run=runs["maml"], output=out, plots=False, **COMMON), Interrupt("evaluate", 3)
        )
    progress = RecordingProgress()
    with caplog.at_level("WARNING", logger="cxr_tools"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], output=out, plots=False, threshold=0.3, **COMMON))
    assert "threshold differ" in caplog.text
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvaluateConfig(data=cache, run=runs["maml"], output=tmp_path / "e2", plots=False, **COMMON),
                 Interrupt("evaluate", 3))  # fmt: skip
    evaluate(EvaluateConfig(data=cache, run=runs["maml"], output=tmp_path / "e2", plots=False, resume=False, **COMMON),
             progress)  # fmt: skip
    assert progress.done("evaluate") == EPISODES


@pytest.mark.parametrize("kind", ["pixels", "maml", "siamese"])
def test_the_threshold_is_the_one_chosen_on_the_support_scores_alone(setup, kind):
    """Refit episode 0 as evaluate did and choose on its support scores: the saved threshold, whatever the
    queries (they are not passed)."""
    from cxr_tools.data.sampling.episodes import load_episode_list
    from cxr_tools.engine.evaluate.runs import architecture_for, load_run
    from cxr_tools.eval.thresholds import choose_thresholds
    from cxr_tools.methods.adapters import AdaptConfig, build_adapter
    from cxr_tools.methods.episodes import episode_tensors
    from cxr_tools.runtime.seeding import make_generator

    _, cache, runs, results, _ = setup
    out = results[kind].output
    summary = json.loads((out / "summary.json").read_text())
    model, meta = (None, None) if kind == "pixels" else load_run(runs[kind])
    reader = open_cache(cache)
    episode = load_episode_list(out / "episodes.json", reader.raw_labels(), reader.labels)[0]
    adapter = build_adapter(model, meta, 2, AdaptConfig(method=summary["method"], steps=COMMON["steps"]))
    _, norm = architecture_for(summary["method"], None, meta, None, reader)
    sx, sy, _, _ = episode_tensors(reader, episode, norm, "cpu")
    scorer = adapter.fit(sx, sy, generator=make_generator(summary["seed"], 0))
    expected = choose_thresholds(sy.numpy(), scorer.support_scores(sx, sy).numpy())
    table = pd.read_csv(out / "episodes.csv", dtype={"class": str})
    saved = table[table["episode"] == 0].set_index("class").loc[list(episode.classes), "threshold"].to_numpy()
    assert saved == pytest.approx(expected, abs=1e-6)
