"""`cxr train-siamese` on a real tiny cache: run directory, validation pair metrics with a chosen threshold,
a loadable Siamese model, SIGTERM + rerun = uninterrupted weights, and `--backbone-from`."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from train_fixtures import assert_same_weights, cxr_command, run_until, synthetic_cache, weights
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.sampling.pairs import PairSampler
from cxr_tools.engine.train import TrainConfig, train
from cxr_tools.engine.train_siamese import VAL_PAIRS_KEY, SiameseConfig, _make_backbone, train_siamese
from cxr_tools.errors import ModelError
from cxr_tools.models import load_model_dir
from cxr_tools.models.siamese import embedder
from cxr_tools.runtime.seeding import numpy_generator

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory.mktemp("siamese-data"))


def _cfg(cache, out, **kw):
    base = dict(backbone="conv4-tiny", embedding_dim=16, epochs=2, batch_size=16, threads=1, log_every_steps=1)
    return SiameseConfig(cache=cache, output=out, **{**base, **kw})


def test_siamese_run_reports_pair_auc_and_chosen_threshold_and_saves_the_model(cache, tmp_path):
    result = train_siamese(_cfg(cache, tmp_path / "run", pair_rule="shares-finding"))
    run = tmp_path / "run"
    assert result.status == "completed" and (run / "checkpoints" / "best.pt").is_file()
    assert json.loads((run / "run.json").read_text())["kind"] == "train-siamese"
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for r in epochs:
        assert 0 <= r["val_pair_auc"] <= 1 and 0.5 <= r["val_accuracy"] <= 1 and 0 <= r["val_threshold"] <= 1
    # the validation set is the fixed, seeded one: same pairs as drawn by hand from the val split
    reader = open_cache(cache)
    val_rows = np.flatnonzero(reader.index["split"].to_numpy() == "val")
    sampler = PairSampler(reader.index, reader.labels, rows=val_rows, rule="shares-finding")
    expected = sampler.sample(min(1000, 4 * sampler.num_images), numpy_generator(0, VAL_PAIRS_KEY))
    assert result.val_pairs_hash == expected.digest() and result.val_pairs == len(expected)
    model, meta = load_model_dir(run)
    assert meta["training"] == "siamese" and meta["extra"]["embedding_dim"] == 16
    assert meta["extra"]["distance"] == "cosine" and meta["extra"]["margin"] == 1.0
    best = [r for r in epochs if r.get("best")][-1]
    assert meta["extra"]["threshold"] == best["val_threshold"] == result.val_threshold
    x = torch.from_numpy(reader.read(val_rows[:4]).astype(np.float32) / 255)[:, None]
    z = embedder(model.eval(), meta)(x)
    assert z.shape == (4, 16) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert torch.equal(model.head.weight, state["backbone.head.weight"])


@pytest.mark.slow
def test_sigterm_then_rerun_ends_with_the_uninterrupted_weights(cache, tmp_path):
    args = ["train-siamese", str(cache), "--backbone", "resnet-tiny", "--embedding-dim", "8", "--epochs", "2"]
    args += ["--batch-size", "8", "--distance", "euclidean", "--margin", "1.5", "--log-every", "1", "--threads", "1"]
    ref = runner.invoke(app, [*args, "-o", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    run = tmp_path / "run"
    proc = run_until(cxr_command(*args, "-o", str(run)), run, steps=5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM: a preempted run is not a success
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    rerun = runner.invoke(app, [*args, "-o", str(run), "--json"])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["resumed"] is True
    assert_same_weights(weights(run / "model"), weights(tmp_path / "ref" / "model"))


def test_backbone_from_reuses_the_trained_features_and_refuses_another_architecture(cache, tmp_path):
    source = tmp_path / "sup"
    train(TrainConfig(cache=cache, output=source, model="conv4-tiny", epochs=1, batch_size=16, threads=1))
    trained, _ = load_model_dir(source)
    cfg = _cfg(cache, tmp_path / "siam", backbone_from=source, epochs=1)
    backbone = _make_backbone(cfg, open_cache(cache))
    for key, value in trained.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(backbone.state_dict()[key], value), key
    assert backbone.head.out_features == 16 and trained.head.out_features == 14
    result = train_siamese(cfg)
    assert result.status == "completed"
    assert load_model_dir(tmp_path / "siam")[1]["extra"]["backbone_from"] == str(source)
    # a Siamese run can seed another one too
    again = _make_backbone(
        _cfg(cache, tmp_path / "x", backbone_from=tmp_path / "siam", embedding_dim=4), open_cache(cache)
    )
    assert again.head.out_features == 4
    with pytest.raises(ModelError, match="holds a 'conv4-tiny' model, not 'resnet-tiny'"):
        _make_backbone(_cfg(cache, tmp_path / "y", backbone="resnet-tiny", backbone_from=source), open_cache(cache))
    res = runner.invoke(
        app,
        [
            "train-siamese",
            str(cache),
            "-o",
            str(tmp_path / "z"),
            "--backbone",
            "resnet-tiny",
            "--backbone-from",
            str(source),
        ],
    )
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "--backbone conv4-tiny" in res.stderr
    unfinished = runner.invoke(
        app, ["train-siamese", str(cache), "-o", str(tmp_path / "w"), "--backbone-from", str(tmp_path / "nothing")]
    )
    assert unfinished.exit_code == 1 and "not a model folder" in unfinished.stderr
