"""`cxr meta-train` engine on a tiny real cache: --shots 7 trains, parameters change, the run directory is complete,
episodes never touch the meta-test classes or images, and every engine (second and first order) runs."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from meta_train_fixtures import SPLIT, tiny_cache, tiny_config, weights

import cxr_tools.data.sampling.meta_samplers as samplers_mod
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.sampling.episodes import EpisodeSampler
from cxr_tools.data.splits.meta import load_meta_split, meta_split_pools, parse_meta_split
from cxr_tools.engine.meta_train import meta_train
from cxr_tools.models import create_model, load_model_dir, read_model_meta
from cxr_tools.runtime.seeding import seed_everything


class RecordingSampler(EpisodeSampler):
    """The real sampler, remembering what it was given and every episode it drew."""

    made: ClassVar[list[RecordingSampler]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn = []
        RecordingSampler.made.append(self)

    def sample(self, rng, shuffle=False):
        episode = super().sample(rng, shuffle=shuffle)
        self.drawn.append(episode)
        return episode


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mt")
    cache = tiny_cache(tmp)
    RecordingSampler.made = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samplers_mod, "EpisodeSampler", RecordingSampler)  # what meta_split_sampler builds
        result = meta_train(tiny_config(cache, tmp / "run"))
    return cache, tmp / "run", result, list(RecordingSampler.made)


def test_shots_7_trains_and_writes_a_loadable_maml_model(trained):
    cache, run, result, _ = trained
    assert result.status == "completed" and result.meta_steps == 2 == result.total_meta_steps
    assert result.episodes_seen == 4 and result.engine == "func"
    model, meta = load_model_dir(run)
    assert meta["training"] == "maml" and meta["num_classes"] == 2 and meta["architecture"] == "conv4-tiny"
    assert meta["cache_manifest_hash"] == open_cache(cache).manifest_hash
    assert meta["input"]["image_size"] == 32 and meta["input"]["normalisation"] == "unit"
    maml = meta["extra"]["maml"]
    assert (maml["inner_lr"], maml["adapt_steps"], maml["first_order"], maml["ways"], maml["shots"]) == (
        0.05,
        2,
        False,
        2,
        7,
    )
    assert meta["extra"]["meta_split"]["test"] == ["F"]
    assert load_meta_split(run) == parse_meta_split(SPLIT)
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 2)


def test_meta_step_changes_every_parameter(trained):
    _, run, _, _ = trained
    seed_everything(3)
    initial = create_model("conv4-tiny", num_classes=2).state_dict()
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    unchanged = [k for k, v in initial.items() if v.is_floating_point() and torch.equal(v, final[k])]
    assert unchanged == []


def test_metrics_and_best_checkpoint(trained):
    _, run, result, _ = trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2] and len(epochs) == 2
    for r in steps:
        assert np.isfinite(r["loss"]) and np.isfinite(r["support_loss_before"]) and "support_loss_last_step" in r
    for r in epochs:
        assert 0.0 <= r["val_auc"] <= 1.0
        for key in ("query_loss_before", "query_loss_after", "support_loss_before", "support_loss_after"):
            assert np.isfinite(r[f"val_{key}"])
    assert result.best_val_auc == max(r["val_auc"] for r in epochs)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert result.selected == "best" and best["step"] == result.best_step
    for key, value in weights(run).items():  # RUN/model holds the best-validated weights
        assert torch.equal(value, best["model"][key])
    saved = json.loads((run / "val_episodes.json").read_text())
    assert saved["hash"] == result.val_episodes_hash and len(saved["episodes"]) == 2


def test_episodes_never_touch_meta_test_classes_or_images(trained):
    cache, _, _, samplers = trained
    reader = open_cache(cache)
    split = parse_meta_split(SPLIT, reader.labels)
    pools = meta_split_pools(reader.index, reader.labels, split, seed=0)
    test_rows = set(pools["test"].tolist())
    raw = reader.raw_labels()
    f_col = reader.labels.index("F")
    assert len(samplers) == 2
    by_classes = {s.classes: s for s in samplers}
    train, val = by_classes[("A", "B", "C")], by_classes[("D", "E")]
    assert set(train.rows) == set(pools["train"]) and set(val.rows) == set(pools["val"])
    assert len(train.drawn) == 4 and len(val.drawn) == 2
    for sampler in samplers:
        assert not test_rows & set(sampler.rows.tolist())
        for ep in sampler.drawn:
            rows = np.concatenate([ep.support_rows, ep.query_rows])
            assert "F" not in ep.classes and not test_rows & set(rows.tolist())
            assert not (raw[rows, f_col] == 1).any()  # no image carrying the meta-test class
            assert set(rows.tolist()) <= set(sampler.rows.tolist())


@pytest.mark.parametrize(
    ("engine", "first_order"),
    [
        ("learn2learn", False),
        ("higher", False),
        ("learn2learn", True),
        ("higher", True),
        ("func", True),
    ],
)
def test_every_engine_trains_to_the_same_weights_as_func(tmp_path, engine, first_order):
    if engine == "learn2learn":
        pytest.importorskip("learn2learn", reason="learn2learn not installed (make setup installs it)")
    cache = tiny_cache(tmp_path)
    common = {"episodes": 2, "val_episodes": 0, "first_order": first_order, "log_every_steps": 0}
    result = meta_train(tiny_config(cache, tmp_path / "run", engine=engine, **common))
    reference = meta_train(tiny_config(cache, tmp_path / "ref", engine="func", **common))
    assert result.status == "completed" and result.engine == engine and result.selected == "last"
    assert reference.engine == "func" and reference.meta_steps == result.meta_steps == 1
    assert read_model_meta(tmp_path / "run")["extra"]["maml"]["first_order"] is first_order
    assert read_model_meta(tmp_path / "run")["extra"]["maml"]["engine"] == engine
    got, want = weights(tmp_path / "run"), weights(tmp_path / "ref")
    for key in want:
        # One Adam step of lr 0.01 moves each weight by up to 0.01; the engines' meta-gradients agree to round-off.
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    seed_everything(3)
    initial = create_model("conv4-tiny", num_classes=2).state_dict()
    assert not torch.equal(got["head.weight"], initial["head.weight"])


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_engine_trains_like_func_and_is_recorded(tmp_path, first_order):
    """Batched tasks through the whole command. vmap's batched kernels round differently from func's (meta-gradients
    agree to ~1e-7: tests/unit/test_maml_gradients.py), and Adam's first step is about lr·sign(g), so a gradient
    element within round-off of zero may move either way (0.05 % of the weights here in second order, 0.9 %
    in first order): nearly every weight must match, not all."""
    cache = tiny_cache(tmp_path)
    common = {"episodes": 2, "val_episodes": 0, "first_order": first_order, "log_every_steps": 0}
    result = meta_train(tiny_config(cache, tmp_path / "run", engine="vmap", **common))
    meta_train(tiny_config(cache, tmp_path / "ref", engine="func", **common))
    assert result.status == "completed" and result.engine == "vmap" and result.meta_steps == 1
    assert read_model_meta(tmp_path / "run")["extra"]["maml"]["engine"] == "vmap"
    got, want = weights(tmp_path / "run"), weights(tmp_path / "ref")
    diffs = torch.cat([(got[k] - want[k]).abs().flatten() for k in want])
    assert float((diffs > 1e-5).float().mean()) < 0.03 and float(diffs.max()) <= 0.02 + 1e-6
