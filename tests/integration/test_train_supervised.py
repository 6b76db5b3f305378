"""`cxr train` on real tiny caches: the run directory, per-class validation AUC, a loadable model, a job
killed with SIGKILL that resumes to the same weights, `--classes base`, and the loss under each
uncertainty policy and class weighting checked against a hand computation."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from cache_factory import make_cache, make_index
from train_fixtures import assert_same_weights, cxr_command, run_until, synthetic_cache, weights
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.labels import METACHEST_SPLIT, apply_uncertainty
from cxr_tools.data.sampling.balance import class_weights
from cxr_tools.data.splits.meta import METACHEST, meta_split_pools
from cxr_tools.engine.train import TrainConfig, train
from cxr_tools.methods.scratch import run_budget
from cxr_tools.models import create_model, load_model_dir
from cxr_tools.runtime.seeding import numpy_generator, seed_everything

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return synthetic_cache(tmp_path_factory.mktemp("train-data"))


def _cfg(cache, out, **kw):
    base = dict(model="conv4-tiny", epochs=2, batch_size=16, threads=1, log_every_steps=1)
    return TrainConfig(cache=cache, output=out, **{**base, **kw})


def test_train_writes_run_dir_with_per_class_val_auc_and_a_loadable_model(cache, tmp_path):
    result = train(_cfg(cache, tmp_path / "run"))
    run = tmp_path / "run"
    assert result.status == "completed" and result.epochs == 2 and result.model_dir == run / "model"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "train" and info["status"] == "completed"
    reader = open_cache(cache)
    labels = list(reader.labels)
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for record in epochs:
        assert {f"val_auc/{lab}" for lab in labels} <= set(record)
        defined = [record[f"val_auc/{lab}"] for lab in labels if not np.isnan(record[f"val_auc/{lab}"])]
        assert defined and record["val_auc"] == pytest.approx(np.mean(defined))
    model, meta = load_model_dir(run)
    assert meta["labels"] == labels and meta["training"] == "supervised"
    assert meta["cache_manifest_hash"] == reader.manifest_hash and meta["input"]["image_size"] == 32
    assert model.head.out_features == len(labels)
    # the fine-tune budget `cxr evaluate RUN` adapts it with, what `--match RUN` copies
    assert meta["extra"]["finetune"] == {"mode": "head", "steps": 100, "lr": 0.01, "optimiser": "adam"}
    assert run_budget(meta) == (100, 0.01, "adam")
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key  # the model folder holds the best epoch's weights
    assert set(result.val_auc) == set(labels)
    # the thresholds predict uses without a support set: chosen on the val split at the selected epoch
    best_record = ([r for r in epochs if r.get("best")] or epochs)[-1]
    saved = meta["extra"]["thresholds"]
    assert set(saved) == set(labels) and "validation" in meta["extra"]["threshold_rule"]
    for lab in labels:
        recorded = best_record[f"val_threshold/{lab}"]
        assert saved[lab] is None if np.isnan(recorded) else saved[lab] == pytest.approx(recorded)


def test_worker_processes_do_not_change_the_result(cache, tmp_path):
    kw = dict(epochs=1, max_steps=4, batch_size=8, log_every_steps=0)
    train(_cfg(cache, tmp_path / "w0", workers=0, **kw))
    train(_cfg(cache, tmp_path / "w2", workers=2, **kw))
    assert_same_weights(weights(tmp_path / "w0" / "model"), weights(tmp_path / "w2" / "model"))


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_ends_with_the_same_weights(cache, tmp_path):
    args = ["train", str(cache), "-m", "resnet-tiny", "--epochs", "2", "--batch-size", "8", "--balance", "sampler"]
    args += ["--checkpoint-every", "3", "--log-every", "1", "--threads", "1"]
    ref = runner.invoke(app, [*args, "-o", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    run = tmp_path / "killed"
    proc = run_until(cxr_command(*args, "-o", str(run)), run, steps=7)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # killed, nothing cleaned up
    assert not (run / "model").exists()
    rerun = runner.invoke(app, [*args, "-o", str(run), "--json"])
    assert rerun.exit_code == 0, rerun.output
    out = json.loads(rerun.stdout)
    assert out["resumed"] is True and out["status"] == "completed"
    assert_same_weights(weights(run / "model"), weights(tmp_path / "ref" / "model"))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, out["steps"] + 1))  # no repeats
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


def test_classes_base_trains_only_the_meta_train_classes_on_their_pool(cache, tmp_path):
    result = train(_cfg(cache, tmp_path / "run", classes=("base",), epochs=1))
    nih_train = tuple(c for c in METACHEST_SPLIT["train"] if c != "Lung Opacity")  # NIH has no Lung Opacity
    assert result.labels == nih_train
    model, meta = load_model_dir(tmp_path / "run")
    assert meta["labels"] == list(nih_train) and model.head.out_features == 6
    reader = open_cache(cache)
    pool = meta_split_pools(reader.index, reader.labels, METACHEST, seed=0)["train"]
    split = reader.index["split"].to_numpy()
    assert result.train_images == int(np.isin(np.flatnonzero(split == "train"), pool).sum())
    held_out = list(METACHEST_SPLIT["val"] + METACHEST_SPLIT["test"])
    all_train = np.flatnonzero(split == "train")
    carriers = all_train[(reader.raw_labels(held_out)[all_train] != 0).any(axis=1)]
    assert len(carriers) and result.train_images <= len(all_train) - len(carriers)


@pytest.fixture(scope="module")
def uncertain_cache(tmp_path_factory):
    rng = np.random.default_rng(3)
    n, labels = 40, ("A", "B", "C")
    values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, 3), p=[0.3, 0.4, 0.2, 0.1]).astype(np.float32)
    splits = ["train"] * 30 + ["val"] * 10
    index = make_index(n, labels, values=values, splits=splits, patients=[f"p{i // 2}" for i in range(n)])
    return make_cache(tmp_path_factory.mktemp("unc"), labels=labels, index=index, size=32)


@pytest.mark.parametrize(
    ("policy", "balance"), [("ignore", "none"), ("zeros", "none"), ("ones", "none"), ("ignore", "weights")]
)
def test_first_step_loss_matches_hand_computation_per_policy(uncertain_cache, tmp_path, policy, balance):
    cfg = _cfg(uncertain_cache, tmp_path / "run", uncertainty=policy, balance=balance, augment=False, max_steps=1)
    cfg = TrainConfig(**{**cfg.__dict__, "batch_size": 8, "seed": 5})
    train(cfg)
    first = next(json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert first["kind"] == "step" and first["step"] == 1

    reader = open_cache(uncertain_cache)
    train_rows = np.flatnonzero(reader.index["split"].to_numpy() == "train")
    targets, mask = apply_uncertainty(reader.raw_labels()[train_rows], policy)
    batch = numpy_generator(5, 0).permutation(len(train_rows))[:8]
    seed_everything(5)
    model = create_model("conv4-tiny", num_classes=3)
    x = torch.from_numpy(reader.read(train_rows[batch]).astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        logits = model(x).double()
    y = torch.from_numpy(targets[batch]).double()
    m = torch.from_numpy(mask[batch]).double()
    pos_weight = torch.from_numpy(class_weights(targets, mask)).double() if balance == "weights" else torch.ones(3)
    # BCE with pos_weight written out: -(w_pos * y * log s + (1 - y) * log(1 - s)), over the unmasked entries
    s = torch.sigmoid(logits)
    per_entry = -(pos_weight * y * torch.log(s) + (1 - y) * torch.log(1 - s))
    expected = float((per_entry * m).sum() / m.sum())
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    raw = reader.raw_labels()[train_rows][batch]
    if policy == "ignore":
        assert (m.numpy() == 0).sum() == (raw == -1).sum() > 0  # uncertain entries left out of the loss
    else:
        assert m.numpy().all() and (y.numpy()[raw == -1] == (policy == "ones")).all()
