"""A frozen-encoder run's checkpoints (``cxr train --backbone hf:DIR --freeze``): ``last.pt`` / ``best.pt`` hold the
head and name the encoder (its model-folder identity, weight checksum included) instead of holding its weights; a
run stopped by SIGTERM reloads the encoder from its folder and ends with the same head as an uninterrupted one; a
changed or missing encoder is refused and the run keeps its checkpoints; a checkpoint holding the full state
(written before) still resumes. The encoder is the tiny random DINOv2 the foundation-encoder tests use, written by
transformers' ``save_pretrained``; nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from evaluate_factory import make_eval_cache
from interrupting_progress import Interrupt
from script_modules import REPO, load_script
from train_fixtures import assert_same_weights, weights

from cxr_tools.engine.train import TrainConfig, train
from cxr_tools.errors import ModelError
from cxr_tools.models import create_model
from cxr_tools.models.foundation import weights_fingerprint
from cxr_tools.runtime.checkpointing import load_checkpoint, load_training_state, save_checkpoint

pytest.importorskip("transformers")

torch.set_num_threads(1)
TINY = load_script(REPO / "examples" / "benchmark" / "tiny_encoder.py", "tiny_encoder")
HEAD = ["head.bias", "head.weight"]


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def _config(cache: Path, out: Path, encoder: Path) -> TrainConfig:
    return TrainConfig(
        cache=cache,
        output=out,
        model=f"hf:{encoder}",
        freeze=True,
        classes=("base",),
        epochs=2,
        batch_size=8,
        lr=0.01,
        augment=False,
        device="cpu",
        threads=1,
        log_every_steps=1,
    )


def _stopped(cache: Path, out: Path, encoder: Path) -> None:
    """Train ``out`` until SIGTERM, sent after the second step of epoch 1, stops it (last.pt at step 2)."""
    result = train(_config(cache, out, encoder), Interrupt("epoch 1/2", 2, signum=signal.SIGTERM))
    assert result.status == "interrupted" and result.steps == 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The cache, the encoder and an uninterrupted reference run on them."""
    tmp = tmp_path_factory.mktemp("frozen")
    cache = make_eval_cache(tmp, n=160, size=32)
    encoder = TINY.save_tiny_dinov2(tmp / "dino")
    reference = tmp / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_OFFLINE", "1")
        result = train(_config(cache, reference, encoder))
    assert result.status == "completed" and result.steps == 8  # 2 epochs of 4 batches
    return cache, encoder, reference


def test_a_frozen_runs_checkpoints_hold_the_head_and_name_the_encoder(world):
    _, encoder, reference = world
    meta = json.loads((reference / "model" / "model.json").read_text())
    assert meta["model_args"]["encoder_sha256"] == weights_fingerprint(encoder)
    identity = {"architecture": meta["architecture"], "model_args": meta["model_args"]}
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        state = load_checkpoint(reference / "checkpoints" / name)
        assert sorted(state["model"]) == HEAD, name
        assert state["version"] == 2 and state["frozen"] == {"prefixes": ["encoder."], "identity": identity}
    encoder_bytes = (encoder / "model.safetensors").stat().st_size  # 183 KB; a ViT-B: 346 MB
    assert (reference / "checkpoints" / "last.pt").stat().st_size * 5 < encoder_bytes  # RNG states are most of it
    assert (reference / "checkpoints" / "best.pt").stat().st_size * 20 < encoder_bytes


def test_a_frozen_run_stopped_by_sigterm_reloads_the_encoder_and_ends_with_the_same_head(world, tmp_path):
    cache, encoder, reference = world
    run = tmp_path / "run"
    _stopped(cache, run, encoder)
    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["step"] == 2 and sorted(state["model"]) == HEAD
    result = train(_config(cache, run, encoder))
    assert result.status == "completed" and result.resumed and result.steps == 8
    assert_same_weights(weights(run / "model"), weights(reference / "model"))
    assert sorted(weights(run / "model")) == HEAD


def _contents(run: Path) -> dict[str, bytes]:
    """What a refused resume must leave as it was: the checkpoints and the metrics."""
    files = [*sorted((run / "checkpoints").iterdir()), run / "metrics.jsonl"]
    return {p.name: p.read_bytes() for p in files}


def test_resume_with_a_changed_or_missing_encoder_is_refused_and_keeps_the_run(world, tmp_path):
    cache, original, reference = world
    encoder, run = tmp_path / "dino", tmp_path / "run"
    shutil.copytree(original, encoder)
    _stopped(cache, run, encoder)
    before = _contents(run)

    TINY.save_tiny_dinov2(encoder, seed=1)  # the same files, other weights
    with pytest.raises(ModelError) as changed:
        train(_config(cache, run, encoder))
    message = str(changed.value)
    assert "\n" not in message and "last.pt" in message and "model_args.encoder_sha256" in message
    assert "Restore the encoder files the run was started with" in message
    assert _contents(run) == before

    shutil.rmtree(encoder)
    with pytest.raises(ModelError) as missing:
        train(_config(cache, run, encoder))
    assert "\n" not in str(missing.value) and str(encoder) in str(missing.value)
    assert _contents(run) == before

    shutil.copytree(original, encoder)  # put back: the run resumes where it stopped
    result = train(_config(cache, run, encoder))
    assert result.status == "completed" and result.resumed
    assert_same_weights(weights(run / "model"), weights(reference / "model"))


def test_a_checkpoint_holding_the_full_state_still_resumes(world, tmp_path):
    cache, encoder, reference = world
    run = tmp_path / "run"
    _stopped(cache, run, encoder)
    last = run / "checkpoints" / "last.pt"
    state = load_training_state(last)
    # last.pt as cxr-tools wrote it before frozen weights were named: version 1, encoder weights included
    full = create_model(f"hf:{encoder}", num_classes=len(state["model"]["head.bias"])).state_dict()
    old = {k: v for k, v in state.items() if k not in ("frozen", "checksum")}
    save_checkpoint(last, {**old, "version": 1, "model": {**full, **state["model"]}})
    assert last.stat().st_size > (encoder / "model.safetensors").stat().st_size
    result = train(_config(cache, run, encoder))
    assert result.status == "completed" and result.resumed
    assert_same_weights(weights(run / "model"), weights(reference / "model"))
    assert sorted(load_checkpoint(last)["model"]) == HEAD  # from then on the checkpoints name the encoder
