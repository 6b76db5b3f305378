"""Frozen-feature evaluation with each image embedded once (methods/embedding_cache.py): the same scores as
embedding every episode again, each pool image embedded once per key and shared by methods, and a features
folder that a later process reuses and that never loses or replaces what cxr did not write."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_factory import make_eval_cache, make_run

from cxr_tools.data.caches.format import open_cache
from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
from cxr_tools.methods.embedding_cache import Embedder, EmbeddingStore, feature_key, key_digest, store_for

torch.set_num_threads(1)
COMMON = {"episodes": 8, "shots": 2, "queries": 3, "device": "cpu", "steps": 15, "plots": False}
CASES = (  # (run kind, method, finetune mode)
    ("supervised", "linear-probe", "head"),
    ("supervised", "finetune", "head"),
    ("supervised", "prototype", "head"),
    ("siamese", "prototype", "head"),
    ("siamese", "linear-probe", "head"),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embcache")
    cache = make_eval_cache(tmp)
    runs = {kind: make_run(tmp, cache, kind, norm="batch") for kind in ("supervised", "siamese")}
    return tmp, cache, runs


def _evaluate(world, kind, method, mode, name, **extra):
    tmp, cache, runs = world
    config = EvaluateConfig(
        data=cache, run=runs[kind], method=method, finetune=mode, output=tmp / name, **COMMON, **extra
    )
    return evaluate(config)


def _pool_rows(result) -> set[int]:
    episodes = json.loads((result.output / "episodes.json").read_text())["episodes"]
    return {r for ep in episodes for r in ep["support_rows"] + ep["query_rows"]}


def test_cached_features_give_the_scores_of_embedding_every_episode(world):
    tmp, _, _ = world
    folder = tmp / "features"
    store = store_for(folder)
    for kind, method, mode in CASES:
        label = f"{kind}-{method}-{mode}"
        plain = _evaluate(world, kind, method, mode, f"plain-{label}", embed_once=False)
        cached = _evaluate(world, kind, method, mode, f"cached-{label}", features_dir=folder)
        a = pd.read_csv(plain.output / "scores.csv")
        b = pd.read_csv(cached.output / "scores.csv")
        assert a[["episode", "class", "row", "target"]].equals(b[["episode", "class", "row", "target"]]), label
        np.testing.assert_allclose(b["score"], a["score"], atol=1e-5, rtol=1e-4, err_msg=label)
        np.testing.assert_allclose(b["threshold"], a["threshold"], atol=1e-5, rtol=1e-4, err_msg=label)
        for metric, value in plain.overall.items():
            np.testing.assert_allclose(cached.overall[metric]["mean"], value["mean"], atol=1e-6, err_msg=label)
        summary = json.loads((cached.output / "summary.json").read_text())
        assert summary["settings"] == json.loads((plain.output / "summary.json").read_text())["settings"]
    # each pool image embedded once per source: the backbone's rows served the linear probe, the fine-tuned
    # head and the prototypes of the supervised run; the Siamese projection's served both of its methods
    pool = _pool_rows(plain)
    assert store.computed == 2 * len(pool)
    assert len(list(folder.glob("*.npz"))) == 2


def test_a_later_process_reuses_the_features_folder(world):
    tmp, cache, _ = world
    folder = tmp / "later"
    _evaluate(world, "supervised", "linear-probe", "head", "first", features_dir=folder)
    (file,) = folder.glob("*.npz")
    reader = open_cache(cache)
    later = EmbeddingStore(folder)  # a new process: nothing in memory
    stored = np.load(file)
    rows = stored["rows"]
    key = json.loads(str(stored["key"]))
    embedder = Embedder(lambda images: pytest.fail("nothing is embedded again"), key["weights"], key["function"])
    assert key_digest(feature_key(embedder, reader)) == file.stem
    got = later.features_for(embedder, rows[::-1], reader)
    torch.testing.assert_close(got, torch.from_numpy(stored["features"][::-1].copy()))
    assert later.computed == 0


def _counting_embedder(weights: str = "w1") -> tuple[Embedder, list[int]]:
    calls: list[int] = []

    def fn(images: np.ndarray) -> torch.Tensor:
        calls.append(len(images))
        x = torch.from_numpy(images.astype(np.float32))
        return torch.stack([x.mean(dim=(1, 2)), x.std(dim=(1, 2))], dim=1)

    return Embedder(fn, weights, "mean-std", batch_size=4), calls


def test_the_store_embeds_missing_rows_only_and_keys_on_weights(world, tmp_path):
    _, cache, _ = world
    reader = open_cache(cache)
    store = EmbeddingStore(tmp_path / "f")
    embedder, calls = _counting_embedder()
    first = store.features_for(embedder, [5, 3, 5, 9], reader)
    assert sum(calls) == 3 and first.shape == (4, 2) and first.dtype == torch.float32
    torch.testing.assert_close(first[0], first[2])
    expected = embedder.fn(reader.read([9, 11, 3]))
    calls.clear()
    torch.testing.assert_close(store.features_for(embedder, [9, 11, 3], reader), expected)
    assert calls == [1]  # only row 11 was new
    other, other_calls = _counting_embedder("w2")  # other weights: another key, nothing shared
    store.features_for(other, [3], reader)
    assert sum(other_calls) == 1 and len(list((tmp_path / "f").glob("*.npz"))) == 2


def test_a_foreign_file_under_a_feature_name_is_left_alone(world, tmp_path, caplog):
    _, cache, _ = world
    reader = open_cache(cache)
    embedder, calls = _counting_embedder()
    folder = tmp_path / "f"
    folder.mkdir()
    target = folder / f"{key_digest(feature_key(embedder, reader))}.npz"
    target.write_bytes(b"not ours")
    with caplog.at_level("WARNING", logger="cxr_tools"):
        got = EmbeddingStore(folder).features_for(embedder, [1, 2], reader)
    assert got.shape == (2, 2) and sum(calls) == 2
    assert target.read_bytes() == b"not ours" and "Not replacing" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == [target.name]  # no temporary file left behind


def test_memory_keeps_the_most_recent_keys_within_its_budget(world):
    _, cache, _ = world
    reader = open_cache(cache)
    store = EmbeddingStore(memory_bytes=1)  # room for one key only
    first, first_calls = _counting_embedder("w1")
    second, _ = _counting_embedder("w2")
    store.features_for(first, [1, 2], reader)
    store.features_for(first, [1, 2], reader)
    assert sum(first_calls) == 2  # kept while it is the only key
    store.features_for(second, [1], reader)
    store.features_for(first, [1, 2], reader)
    assert sum(first_calls) == 4  # dropped for the newer key, then embedded again
