"""Bit-identical resume of the shared TrainLoop: straight runs vs interrupted (signal, crash) and resumed runs."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from script_modules import load_script

from cxr_tools.errors import OutputExistsError

_SCRIPT = Path(__file__).with_name("runtime_train_script.py")


tiny = load_script(_SCRIPT, "cxr_runtime_train_script")  # one module object shared by the runtime test files
_weights, _assert_identical = tiny.weights, tiny.assert_identical


def _kill_self(sig: int):
    def hook(n: int, at: int) -> None:
        if n == at:
            os.kill(os.getpid(), sig)

    return hook


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-epoch run (checkpoint every 4 steps, which must not change results)."""
    path = tmp_path_factory.mktemp("straight") / "run"
    result, model = tiny.train(path, tiny.TinyConfig(epochs=2, every_steps=4))
    return path, result, _weights(model)


def test_straight_run_completes_and_checkpoints_load_weights_only(straight):
    path, result, weights = straight
    assert result.status == "completed" and result.epochs == 2 and result.steps == 12
    info = json.loads((path / "run.json").read_text())
    assert info["status"] == "completed" and info["kind"] == "test-tiny" and info["resumed"] == 0
    last = torch.load(path / "checkpoints" / "last.pt", weights_only=True)
    _assert_identical(last["model"], weights)
    assert last["extra"]["loop"]["finished"] is True
    best = torch.load(path / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch and best["extra"]["value"] == pytest.approx(result.best_metric)


def test_one_epoch_then_resume_is_bit_identical(straight, tmp_path):
    _, ref_result, ref_weights = straight
    path = tmp_path / "run"
    cfg = tiny.TinyConfig(epochs=2, every_steps=4)
    # SIGTERM arrives while epoch 1 is being validated: the epoch-end checkpoint is written, then the loop stops.
    first, _ = tiny.train(path, cfg, on_validate=lambda n: _kill_self(signal.SIGTERM)(n, 1))
    assert first.status == "interrupted" and first.epochs == 1 and first.steps == 6 and first.signal == "SIGTERM"
    assert json.loads((path / "run.json").read_text())["status"] == "interrupted"
    second, model = tiny.train(path, cfg)
    assert second.status == "completed" and second.resumed and second.steps == 12
    _assert_identical(_weights(model), ref_weights)
    assert second.best_metric == ref_result.best_metric and second.best_epoch == ref_result.best_epoch
    info = json.loads((path / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"] == 1 and len(info["sessions"]) == 2


def test_mid_epoch_signal_then_resume_is_bit_identical_and_metrics_equal(straight, tmp_path):
    ref_path, _, ref_weights = straight
    path = tmp_path / "run"
    cfg = tiny.TinyConfig(epochs=2, every_steps=4)
    first, _ = tiny.train(path, cfg, on_step=lambda n: _kill_self(signal.SIGUSR1)(n, 3))
    assert first.status == "interrupted" and first.steps == 3 and first.signal == "SIGUSR1"
    assert torch.load(path / "checkpoints" / "last.pt", weights_only=True)["extra"]["loop"]["batch"] == 3
    second, model = tiny.train(path, cfg)
    assert second.resumed
    _assert_identical(_weights(model), ref_weights)
    ref_lines = (ref_path / "metrics.jsonl").read_text().splitlines()
    assert (path / "metrics.jsonl").read_text().splitlines() == ref_lines


def test_crash_after_periodic_checkpoint_drops_later_metrics_and_resumes_identically(straight, tmp_path):
    ref_path, _, ref_weights = straight
    path = tmp_path / "run"
    cfg = tiny.TinyConfig(epochs=2, every_steps=4)

    def crash(n: int) -> None:
        if n == 10:  # steps 9 and 10's records are written after the step-8 checkpoint, then the job dies
            raise RuntimeError("node failure")

    with pytest.raises(RuntimeError, match="node failure"):
        tiny.train(path, cfg, on_step=crash)
    assert json.loads((path / "run.json").read_text())["status"] == "failed"
    assert torch.load(path / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    _, model = tiny.train(path, cfg)
    _assert_identical(_weights(model), ref_weights)
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 13))
    assert records == [json.loads(line) for line in (ref_path / "metrics.jsonl").read_text().splitlines()]


def test_completed_run_is_refused_without_overwrite(straight):
    path, _, _ = straight
    with pytest.raises(OutputExistsError, match="--overwrite"):
        tiny.train(path, tiny.TinyConfig(epochs=2, every_steps=4))


def test_early_stopping_stops_and_resumes_with_its_state(tmp_path):
    scores = [0.5, 0.6, 0.55, 0.54, 0.53, 0.52, 0.51, 0.5]
    cfg = tiny.TinyConfig(epochs=8, patience=2, schedule="none")
    ref, ref_model = tiny.train(tmp_path / "a", cfg, val_sequence=scores)
    assert ref.stopped_early and ref.epochs == 4 and ref.best_epoch == 2 and ref.best_metric == 0.6
    assert ref.status == "completed"
    # interrupted while validating epoch 3 (one epoch without improvement counted), then resumed
    first, _ = tiny.train(
        tmp_path / "b", cfg, val_sequence=scores, on_validate=lambda n: _kill_self(signal.SIGTERM)(n, 3)
    )
    assert first.status == "interrupted" and first.epochs == 3
    second, model = tiny.train(tmp_path / "b", cfg, val_sequence=scores)
    assert second.stopped_early and second.epochs == 4 and second.best_epoch == 2
    _assert_identical(_weights(model), _weights(ref_model))
    epochs = [
        r for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"
    ]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4] and epochs[-1]["stopped_early"] is True
