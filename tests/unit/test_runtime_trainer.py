"""TrainLoop options: max_steps, batches_fn(start=), manual backward, grad clipping, and its errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch

from cxr_tools.errors import ConfigError
from cxr_tools.runtime.checkpointing import CheckpointPolicy, FrozenWeights
from cxr_tools.runtime.progress import RecordingProgress
from cxr_tools.runtime.rundir import open_run
from cxr_tools.runtime.trainer import LoopOptions, LoopParts, TrainLoop


@dataclasses.dataclass(frozen=True)
class Cfg:
    name: str = "t"


def _loop(run, model, opt, *, progress=None, **kw):
    """A TrainLoop from one keyword set: the LoopParts fields go to its parts, the rest to its options."""
    names = {f.name for f in dataclasses.fields(LoopParts)}
    parts = LoopParts(**{k: v for k, v in kw.items() if k in names})
    options = LoopOptions(**{k: v for k, v in kw.items() if k not in names})
    return TrainLoop(run, model, opt, parts, options, progress=progress)


def _parts(tmp_path, **loop_kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(12, 3), torch.randn(12, 1)
    run = open_run(tmp_path / "run", "test", Cfg())
    batches = [(x[i : i + 3], y[i : i + 3]) for i in range(0, 12, 3)]

    def step_fn(batch):
        return {"loss": torch.nn.functional.mse_loss(model(batch[0]), batch[1]), "n": len(batch[0])}

    kw = {
        "step_fn": step_fn,
        "batches_fn": lambda epoch, start: batches[start:],
        "checkpoint": CheckpointPolicy(every_minutes=None),
    }
    kw.update(loop_kw)
    return run, model, opt, kw


def test_max_steps_stops_mid_epoch_and_validates(tmp_path):
    run, model, opt, kw = _parts(tmp_path, validate_fn=lambda: {"val_x": 1.0}, log_every_steps=0)
    progress = RecordingProgress()
    result = _loop(run, model, opt, max_steps=6, progress=progress, **kw).fit()
    assert result.status == "completed" and result.steps == 6 and result.epochs == 2
    records = run.read_metrics()
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 6)]
    assert records[0]["train_n"] == 3.0 and records[1]["val_x"] == 1.0
    assert progress.done("epoch 1") == 4 and progress.done("epoch 2") == 2


def test_batches_fn_with_start_is_asked_to_skip_on_resume(tmp_path):
    straight_run, model, opt, kw = _parts(tmp_path / "a")
    _loop(straight_run, model, opt, max_epochs=2, **kw).fit()
    expected = model.weight.detach().clone()

    run, model, opt, kw = _parts(tmp_path / "b")
    batches = kw["batches_fn"](0, 0)
    calls = []

    def batches_fn(epoch, start):
        calls.append((epoch, start))
        return batches[start:]

    def stop_at_two(batch):
        if len(calls) == 1 and kw["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        kw["n"] += 1
        return step_fn(batch)

    step_fn, kw["n"] = kw["step_fn"], 0
    loop_kw = {"batches_fn": batches_fn, "checkpoint": kw["checkpoint"], "max_epochs": 2}
    first = _loop(run, model, opt, step_fn=stop_at_two, **loop_kw).fit()
    assert first.status == "interrupted" and first.steps == 3
    run, model, opt, kw = _parts(tmp_path / "b")
    calls.clear()
    _loop(run, model, opt, step_fn=kw["step_fn"], **loop_kw).fit()
    assert calls == [(0, 3), (1, 0)]
    assert torch.equal(model.weight, expected)


def test_manual_backward_and_grad_clip(tmp_path):
    run, model, opt, kw = _parts(tmp_path)

    def step_fn(batch):
        loss = 1000 * torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        return {"loss": loss.item()}

    result = _loop(
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
        _loop(run, model, opt, **kw)
    with pytest.raises(ConfigError, match="monitored metric"):
        from cxr_tools.runtime.checkpointing import EarlyStopping

        _loop(run, model, opt, max_epochs=1, early_stopping=EarlyStopping(2), **kw)
    with pytest.raises(ConfigError, match="'val_auc' was not reported"):
        _loop(run, model, opt, max_epochs=1, monitor="val_auc", **kw).fit()
    assert json.loads(run.run_json_path.read_text())["status"] == "failed"
    with pytest.raises(TypeError, match=r"names weights that train \(weight\)"):  # they would never be saved
        _loop(run, model, opt, max_epochs=1, frozen=FrozenWeights(("weight",), {"source": "x"}), **kw)


def test_diverging_loss_is_reported(tmp_path):
    run, model, opt, kw = _parts(tmp_path)

    def step_fn(batch):
        return {"loss": model(batch[0]).sum() * float("nan")}

    with pytest.raises(ConfigError, match="diverged"):
        _loop(run, model, opt, max_epochs=1, **{**kw, "step_fn": step_fn}).fit()


def _meta_loop(
    tmp_path, name, amp, engine="func", first_order=False, interrupt_at=None, manual_keyword=True, loss_scale=1.0
):
    """A TrainLoop meta-training a tiny conv net for 4 steps with the real ``meta_backward`` (SGD: the update is
    proportional to the gradient, so a gradient off by the loss scale shows; Adam would hide it). A SIGTERM at
    step ``interrupt_at`` stops it there with last.pt written."""
    from cxr_tools.methods.maml import MamlConfig, meta_backward, multilabel_bce

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )  # fmt: skip
    cfg = MamlConfig(inner_lr=0.1, adapt_steps=2, first_order=first_order, engine=engine)

    def loss_fn(logits, targets):
        return multilabel_bce(logits, targets) * loss_scale

    def tasks(step):
        g = torch.Generator().manual_seed(step)
        return [
            (torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 2, (6, 3), generator=g).float(),
             torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 2, (6, 3), generator=g).float())
            for _ in range(2)
        ]  # fmt: skip

    def step_fn(step, backward):
        if step == interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": meta_backward(model, tasks(step), cfg, loss_fn, backward=backward).loss}

    def plain_step_fn(step):
        return {"loss": meta_backward(model, tasks(step), cfg, loss_fn).loss}

    loop = _loop(
        open_run(tmp_path / name, "test", Cfg()),
        model,
        torch.optim.SGD(model.parameters(), lr=0.5 / loss_scale),
        step_fn=step_fn if manual_keyword else plain_step_fn,
        batches_fn=lambda epoch, start: range(epoch * 2 + start, epoch * 2 + 2),
        max_steps=4,
        manual_backward=True,
        amp=amp,
        checkpoint=CheckpointPolicy(every_minutes=None),
        log_every_steps=0,
    )
    return loop, model


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    ("engine", "first_order"), [("func", False), ("func", True), ("higher", True), ("vmap", False), ("vmap", True)]
)
def test_fp16_manual_meta_backward_goes_through_the_scaler_and_matches_fp32(tmp_path, engine, first_order):
    if engine == "higher":
        pytest.importorskip("higher")
    from cxr_tools.runtime.devices import AmpSettings

    loop, model = _meta_loop(tmp_path, "fp32", False, engine, first_order)
    start = _flat(model)
    loop.fit()
    fp32_update = _flat(model) - start

    # An fp16 run on the CPU: CPU autocast and an enabled GradScaler (a real one, as on a V100 or T4).
    loop, model = _meta_loop(tmp_path, "fp16", AmpSettings(True, "fp16"), engine, first_order)
    assert loop.scaler.is_enabled()
    assert torch.equal(_flat(model), start)
    loop.fit()
    assert loop.scaler.get_scale() == 2.0**16  # it scaled every step, and no step overflowed (none was skipped)
    fp16_update = _flat(model) - start
    assert float((fp16_update - fp32_update).norm() / fp32_update.norm()) < 0.05

    # Resumed: the scale saved in last.pt is restored, and the gradients still carry exactly that factor.
    first = _meta_loop(tmp_path, "resumed", AmpSettings(True, "fp16"), engine, first_order, interrupt_at=1)[0].fit()
    assert first.status == "interrupted" and first.steps == 2
    loop, model = _meta_loop(tmp_path, "resumed", AmpSettings(True, "fp16"), engine, first_order)
    result = loop.fit()
    assert result.resumed and result.steps == 4 and loop.scaler.get_scale() == 2.0**16
    assert loop.scaler.state_dict()["_growth_tracker"] == 4  # 2 unskipped steps restored + 2 after the resume
    resumed_update = _flat(model) - start
    assert float((resumed_update - fp32_update).norm() / fp32_update.norm()) < 0.05


@pytest.mark.parametrize(
    ("engine", "first_order"),
    [("func", False), ("func", True), ("higher", True), ("learn2learn", False), ("vmap", False), ("vmap", True)],
)
def test_fp16_meta_gradients_too_small_for_fp16_survive_through_the_scale(tmp_path, engine, first_order):
    """A loss of order 1e-6 has fp16 gradients below fp16's smallest value: unscaled they flush to zero (every
    engine, first and second order: their gradients are taken when the caller backpropagates, i.e. scaled)."""
    from cxr_tools.errors import DependencyError
    from cxr_tools.methods.maml import resolve_engine

    try:
        resolve_engine(engine, quiet=True)
    except DependencyError as exc:
        pytest.skip(exc.message)
    from cxr_tools.runtime.devices import AmpSettings

    tiny = 2.0**-20
    loop, model = _meta_loop(tmp_path, "fp32", False, engine, first_order, loss_scale=tiny)
    start = _flat(model)
    loop.fit()
    fp32_update = _flat(model) - start
    loop, model = _meta_loop(tmp_path, "fp16", AmpSettings(True, "fp16"), engine, first_order, loss_scale=tiny)
    loop.fit()
    fp16_update = _flat(model) - start
    assert float((fp16_update - fp32_update).norm() / fp32_update.norm()) < 0.05


def test_a_manual_step_that_cannot_use_the_scaler_is_refused_under_fp16(tmp_path):
    from cxr_tools.runtime.devices import AmpSettings

    with pytest.raises(TypeError, match="backward"):
        _meta_loop(tmp_path, "r", AmpSettings(True, "fp16"), manual_keyword=False)
    loop, _ = _meta_loop(tmp_path, "ok", False, manual_keyword=False)  # without a scaler it is fine
    assert loop.fit().steps == 4


def test_step_values_stay_on_the_device_between_records(tmp_path):
    run, model, opt, kw = _parts(tmp_path)
    reads = []

    class Counted(torch.Tensor):  # counts reads of its values into Python (a host sync on a GPU)
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("item", "tolist", "__float__"):
                reads.append(func.__name__)
            return super().__torch_function__(func, types, args, kwargs or {})

    batches = kw["batches_fn"](0, 0) * 10  # 40 steps in one epoch

    def step_fn(batch):
        loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        return {"loss": loss.as_subclass(Counted), "n": len(batch[0])}

    kw.update(step_fn=step_fn, batches_fn=lambda epoch, start: batches[start:])
    _loop(run, model, opt, max_epochs=1, log_every_steps=20, **kw).fit()
    steps = [r for r in run.read_metrics() if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [20, 40] and all(isinstance(r["loss"], float) for r in steps)
    # two step records, the epoch record (finite check + means) and the progress line (at most once a second)
    assert 4 <= len(reads) <= 8, reads
