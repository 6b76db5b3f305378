"""`cxr meta-train --algorithm protonet` end to end on the tiny phantom cache: it trains (the embedding moves, the
model card and lineage say ProtoNet-ML), `cxr evaluate` scores it with its trained prototype rule, `cxr predict
--support` adapts it, `cxr runs` names it, and its base prototypes come from the meta-train pool.
(Resume after SIGTERM and DDP: tests/integration/test_meta_train_resume.py and test_meta_train_ddp.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from meta_train_fixtures import SPLIT, tiny_cache
from predict_fixtures import write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.models import create_model
from cxr_tools.runtime.seeding import seed_everything

runner = CliRunner()
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("protonet")
    cache = tiny_cache(root)
    run = root / "runs" / "meta-train" / "pn"
    args = ["meta-train", str(cache), "-o", str(run), "--algorithm", "protonet", "--meta-split", SPLIT]
    args += ["--ways", "2", "--shots", "7", "--queries", "3", "--meta-batch", "2", "--episodes", "8"]
    args += ["--meta-lr", "0.01", "--backbone", "conv4-tiny", "--val-every", "2", "--val-episodes", "2"]
    result = runner.invoke(app, [*args, "--seed", "3", "--device", "cpu", "--threads", "1", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return cache, run, json.loads(result.stdout)


def test_trains_an_embedding_and_records_protonet_everywhere(trained):
    _, run, out = trained
    assert out["status"] == "completed" and out["algorithm"] == "protonet" and out["meta_steps"] == 4
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["training"] == "protonet" and "maml" not in meta["extra"]
    assert meta["extra"]["protonet"]["rule"] == "mean-distance" and meta["extra"]["protonet"]["shots"] == 7
    assert meta["lineage"]["pool"]["name"] == "meta-train+meta-val"
    assert json.loads((run / "run.json").read_text())["algorithm"] == "protonet"
    # every feature parameter moved away from the seed's initialisation; the unused head did not
    seed_everything(3)
    initial = create_model("conv4-tiny", num_classes=2).state_dict()
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    unchanged = [k for k, v in initial.items() if v.is_floating_point() and torch.equal(v, final[k])]
    assert unchanged and all(k.startswith("head.") for k in unchanged), unchanged
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    assert len(epochs) == 2 and all(0.0 <= e["val_auc"] <= 1.0 and "val_query_loss" in e for e in epochs)


def test_evaluate_scores_it_with_its_trained_prototype_rule(trained):
    cache, run, _ = trained
    args = ["evaluate", str(run), "--data", str(cache), "--ways", "1", "--shots", "3", "--queries", "3"]
    result = runner.invoke(app, [*args, "--episodes", "4", "--device", "cpu", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == "prototype" and out["kind"] == "protonet" and out["classes"] == ["F"]
    settings = json.loads((run / "eval" / "summary.json").read_text())["settings"]
    assert settings["rule"] == "mean-distance" and settings["temperature"] == 1.0


def test_predict_with_a_support_folder_uses_the_prototypes(trained, tmp_path):
    _, run, _ = trained
    rng = np.random.default_rng(0)
    for cls in ("A", "B", "NORMAL"):
        for i in range(3):
            write_png(tmp_path / "support" / cls / f"{cls}_{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    out = tmp_path / "p.csv"
    args = ["predict", str(tmp_path / "support"), "-o", str(out), "--model", str(run), "--support"]
    result = runner.invoke(app, [*args, str(tmp_path / "support"), "--device", "cpu", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "prototype"
    assert out.read_text().splitlines()[0].startswith("path,A,B")
    alone = runner.invoke(
        app, ["predict", str(tmp_path / "support"), "-o", str(tmp_path / "q.csv"), "--model", str(run)]
    )
    assert alone.exit_code != 0 and "protonet run" in alone.stderr and "--support" in alone.stderr


def test_runs_lists_it_as_protonet(trained, monkeypatch):
    _, run, _ = trained
    from cxr_tools.workspace import entries

    monkeypatch.setenv("CXR_RUNS", str(run.parents[1]))
    mine = [e for e in entries() if e.path == run]
    assert mine and mine[0].kind == "meta-train" and mine[0].metric.startswith("protonet best val_auc")


def test_base_prototypes_of_the_meta_train_classes(trained):
    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.data.splits.meta import load_meta_split, meta_split_pools
    from cxr_tools.methods.protonet import base_prototypes, embedding_fn
    from cxr_tools.models import load_model_dir
    from cxr_tools.models.inputs import to_model_input

    cache_dir, run, _ = trained
    model, meta = load_model_dir(run / "model")
    cache = open_cache(cache_dir)
    split = load_meta_split(run)
    rows = meta_split_pools(cache.index, cache.labels, split, seed=int(meta["extra"]["pool_seed"]))["train"]
    protos = base_prototypes(model, meta, cache, rows, split.classes("train"))
    assert protos.shape[0] == 3 and torch.isfinite(protos).all()
    a_rows = rows[cache.raw_labels(["A"])[rows, 0] == 1]
    with torch.no_grad():
        z = embedding_fn(model.eval(), meta)(to_model_input(cache.read(a_rows), meta, "cpu"))
    assert torch.allclose(protos[0], z.mean(dim=0), atol=1e-5)  # the mean embedding of A's meta-train images
