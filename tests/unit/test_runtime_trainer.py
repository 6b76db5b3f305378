"""TrainLoop options: max_steps, batches_fn(start=), manual backward, grad clipping, and its errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch

from cxr_tools.errors import ConfigError
from cxr_tools.runtime.checkpointing import CheckpointPolicy
from cxr_tools.runtime.progress import RecordingProgress
from cxr_tools.runtime.rundir import open_run
from cxr_tools.runtime.trainer import TrainLoop


@dataclasses.dataclass(frozen=True)
class Cfg:
    name: str = "t"


def _parts(tmp_path, **loop_kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    run = open_run(tmp_path / "run", "test", Cfg())
    batches = [(x[i : i + 3], y[i : i + 3]) for i in range(0, 12, 3)]

    def step_fn(batch):
        return {"loss": torch.nn.functional.mse_loss(model(batch[0]), batch[1]), "n": len(batch[0])}

    kw = {"step_fn": step_fn, "batches_fn": lambda epoch: batches, "checkpoint": CheckpointPolicy(every_minutes=None)}
    kw.update(loop_kw)
    return run, model, opt, kw


def test_max_steps_stops_mid_epoch_and_validates(tmp_path):
    run, model, opt, kw = _parts(tmp_path, validate_fn=lambda: {"val_x": 1.0}, log_every_steps=0)
    progress = RecordingProgress()
    result = TrainLoop(run, model, opt, max_steps=6, progress=progress, **kw).fit()
    assert result.status == "completed" and result.steps == 6 and result.epochs == 2
    records = run.read_metrics()
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 6)]
    assert records[0]["train_n"] == 3.0 and records[1]["val_x"] == 1.0
    assert progress.done("epoch 1") == 4 and progress.done("epoch 2") == 2


def test_batches_fn_with_start_is_asked_to_skip_on_resume(tmp_path):
    straight_run, model, opt, kw = _parts(tmp_path / "a")
    TrainLoop(straight_run, model, opt, max_epochs=2, **kw).fit()
    expected = model.weight.detach().clone()

    run, model, opt, kw = _parts(tmp_path / "b")
    batches = kw["batches_fn"](0)
    calls = []

    def batches_fn(epoch, start=0):
        calls.append((epoch, start))
        return batches[start:]

    def stop_at_two(batch):
        if len(calls) == 1 and kw["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        kw["n"] += 1
        return step_fn(batch)

    step_fn, kw["n"] = kw["step_fn"], 0
    loop_kw = {"batches_fn": batches_fn, "checkpoint": kw["checkpoint"], "max_epochs": 2}
    first = TrainLoop(run, model, opt, step_fn=stop_at_two, **loop_kw).fit()
    assert first.status == "interrupted" and first.steps == 3
    run, model, opt, kw = _parts(tmp_path / "b")
    calls.clear()
    TrainLoop(run, model, opt, step_fn=kw["step_fn"], **loop_kw).fit()
    assert calls == [(0, 3), (1, 0)]
    assert torch.equal(model.weight, expected)


def test_manual_backward_and_grad_clip(tmp_path):
    run, model, opt, kw = _parts(tmp_path)

    def step_fn(batch):
        loss = 1000 * torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        return {"loss": loss.item()}

    result = TrainLoop(
        run,
        model,
        opt,
        max_epochs=1,
        manual_backward=True,
        grad_clip=0.5,
        log_every_steps=1,
        **{**kw, "step_fn": step_fn},
    ).fit()
    assert result.steps == 4
    norms = [r["grad_norm"] for r in run.read_metrics() if r["kind"] == "step"]
    assert len(norms) == 4 and all(n > 0.5 for n in norms)  # pre-clip norms are reported


def test_errors_say_what_is_wrong(tmp_path):
    run, model, opt, kw = _parts(tmp_path)
    with pytest.raises(ConfigError, match="max_epochs or max_steps"):
        TrainLoop(run, model, opt, **kw)
    with pytest.raises(ConfigError, match="monitored metric"):
        from cxr_tools.runtime.checkpointing import EarlyStopping

        TrainLoop(run, model, opt, max_epochs=1, early_stopping=EarlyStopping(2), **kw)
    with pytest.raises(ConfigError, match="'val_auc' was not reported"):
        TrainLoop(run, model, opt, max_epochs=1, monitor="val_auc", **kw).fit()
    assert json.loads(run.run_json_path.read_text())["status"] == "failed"


def test_diverging_loss_is_reported(tmp_path):
    run, model, opt, kw = _parts(tmp_path)

    def step_fn(batch):
        return {"loss": model(batch[0]).sum() * float("nan")}

    with pytest.raises(ConfigError, match="diverged"):
        TrainLoop(run, model, opt, max_epochs=1, **{**kw, "step_fn": step_fn}).fit()
