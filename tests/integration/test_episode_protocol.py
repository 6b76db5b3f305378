"""The episode protocol end to end: evaluation episodes are patient-disjoint and say so in their files; an
interrupted evaluation made on old-format episodes is refused, not mixed; a 10-class single-label image folder
(no "No Finding") is preprocessed, meta-trained and evaluated with the real commands."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from evaluate_factory import make_eval_cache, make_run
from interrupting_progress import Interrupt
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.sampling.episodes import EPISODE_LIST_VERSION, index_patients, load_episode_list
from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
from cxr_tools.errors import DataError

torch.set_num_threads(1)
runner = CliRunner()
COMMON = {"episodes": 4, "shots": 2, "queries": 3, "device": "cpu", "plots": False}


def test_evaluation_episodes_are_patient_disjoint_and_recorded(tmp_path):
    cache = make_eval_cache(tmp_path)  # two films per patient
    run = make_run(tmp_path, cache, "maml")
    result = evaluate(EvaluateConfig(data=cache, run=run, **COMMON))
    reader = open_cache(cache)
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["episode_list_version"] == EPISODE_LIST_VERSION == 2 and summary["images_per_patient"] == 1
    saved = json.loads((result.output / "episodes.json").read_text())
    assert saved["version"] == 2 and saved["images_per_patient"] == 1 and saved["hash"] == result.episode_list_hash
    episodes = load_episode_list(
        result.output / "episodes.json", reader.raw_labels(), reader.labels, fingerprint=reader.fingerprint
    )
    patients = index_patients(reader.index)
    for ep in episodes:
        both = patients[np.concatenate([ep.support_rows, ep.query_rows])]
        assert len(set(both)) == len(both)  # no patient twice, so none on both sides


def test_an_interrupted_evaluation_on_old_format_episodes_is_refused(tmp_path):
    cache = make_eval_cache(tmp_path)
    run = make_run(tmp_path, cache, "maml")
    out = tmp_path / "eval"
    config = EvaluateConfig(data=cache, run=run, output=out, **COMMON)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, Interrupt("evaluate", after=2))
    # what an interrupted evaluation of the previous release left: no format version anywhere
    for name in ("progress.json", "episodes.json"):
        data = json.loads((out / name).read_text())
        data.pop("episode_list_version", None)
        data.pop("version", None)
        (out / name).write_text(json.dumps(data))
    with pytest.raises(DataError, match="format version 1") as err:
        evaluate(config)
    assert "--overwrite" in str(err.value.hint)
    assert not (out / "summary.json").exists()
    done = evaluate(EvaluateConfig(data=cache, run=run, output=out, overwrite=True, **COMMON))
    assert json.loads((done.output / "summary.json").read_text())["episode_list_version"] == 2


@pytest.mark.slow
def test_a_ten_class_single_label_folder_meta_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"digit{k}" for k in range(10)]
    root = tmp_path / "digits"
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(8):
            img = rng.integers(0, 60, (32, 32), dtype=np.uint8)
            img[4 + 2 * (k % 5) : 12 + 2 * (k % 5), 4 + 10 * (k // 5) : 14 + 10 * (k // 5)] = 220  # a class blob
            cv2.imwrite(str(root / name / f"{name}_{i}.png"), img)
    cache = tmp_path / "cache"
    res = runner.invoke(
        app, ["preprocess", str(root), "-o", str(cache), "--source", "folder", "--size", "32", "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    assert list(open_cache(cache).labels) == classes  # no "No Finding": every image has a class
    split = "train=digit0,digit1,digit2,digit3;val=digit4,digit5,digit6;test=digit7,digit8,digit9"
    episode = ["--ways", "2", "--shots", "2", "--queries", "2", "--device", "cpu", "--threads", "1"]
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        ["meta-train", str(cache), "-o", str(run), "--meta-split", split, *episode, "--backbone", "conv4-tiny",
         "--episodes", "8", "--meta-batch", "2", "--val-every", "2", "--val-episodes", "2", "--adapt-steps", "1",
         "--engine", "func", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((run / "val_episodes.json").read_text())["version"] == 2
    out = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(cache), "-o", str(out), *episode,
                              "--episodes", "3", "--no-plots", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["digit7", "digit8", "digit9"] and summary["episodes"] == 3
    assert 0.0 <= summary["overall"]["auc"]["mean"] <= 1.0
    reader = open_cache(cache)
    raw = reader.raw_labels()
    for ep in json.loads((out / "episodes.json").read_text())["episodes"]:
        cols = [classes.index(c) for c in ep["classes"]]
        negatives = ep["support_rows"][-2:] + ep["query_rows"][-2:]
        assert not (raw[negatives][:, cols] == 1).any()  # negatives: the third meta-test class
        assert (raw[negatives].sum(axis=1) == 1).all()
