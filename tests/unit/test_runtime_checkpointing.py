"""Training checkpoints (weights_only, atomic), checkpoint policy, best tracking, early stopping, schedules."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from cxr_tools.errors import ConfigError, ModelError, NoSpaceError
from cxr_tools.runtime import checkpointing as ckpt
from cxr_tools.runtime.schedules import SCHEDULES, make_scheduler


def _setup(lr: float = 0.1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = make_scheduler("cosine", opt, total_steps=10, warmup_steps=2)
    return model, opt, sched


def _train(model, opt, sched, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 1, 8, 8)).pow(2).mean().backward()
        opt.step()
        sched.step_batch()


def test_state_loads_with_weights_only_and_resumes_exactly(tmp_path):
    model, opt, sched = _setup()
    _train(model, opt, sched, 3)
    path = ckpt.save_training_state(
        tmp_path / "last.pt",
        model,
        opt,
        sched,
        None,
        step=3,
        epoch=0,
        extra={"loop": {"batch": 3}, "sampler": torch.arange(3)},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cxr-training-state" and raw["step"] == 3 and raw["extra"]["loop"] == {"batch": 3}
    _train(model, opt, sched, 2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = _setup(lr=0.5)  # different LR: the checkpoint must win
    ckpt.restore_training_state(ckpt.load_training_state(path), model2, opt2, sched2)
    _train(model2, opt2, sched2, 2)
    for key, value in expected.items():
        assert torch.equal(model2.state_dict()[key], value), key


def test_crash_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    path = ckpt.save_training_state(tmp_path / "last.pt", model, opt, sched, None, step=1, epoch=0)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(NoSpaceError, match=f"No space left on {tmp_path}"):
        ckpt.save_training_state(path, model, opt, sched, None, step=2, epoch=0)
    assert path.read_bytes() == before
    assert ckpt.load_training_state(path)["step"] == 1
    # no temporary left behind; the checkpoint the save would have replaced is kept as last.prev.pt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


def test_unreadable_or_foreign_checkpoints_are_model_errors(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="unreadable"):
        ckpt.load_training_state(tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="does not exist"):
        ckpt.load_training_state(tmp_path / "none.pt")
    model, _, _ = _setup()
    ckpt.save_model_state(tmp_path / "best.pt", model, step=1, epoch=1, extra={"value": 0.5})
    with pytest.raises(ModelError, match="not a cxr training checkpoint"):
        ckpt.load_training_state(tmp_path / "best.pt")
    other = torch.nn.Linear(3, 1)
    state = {"model": other.state_dict()}
    with pytest.raises(ModelError, match="does not fit"):
        ckpt.restore_training_state(state, model)


def _encoder_and_head(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(OrderedDict(encoder=torch.nn.Linear(4, 3), head=torch.nn.Linear(3, 1)))


def _frozen(sha: str) -> ckpt.FrozenWeights:
    return ckpt.FrozenWeights(("encoder.",), {"source": "hf:enc", "sha256": sha}, "Restore the encoder files.")


def _same(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


def test_frozen_weights_are_named_not_saved_and_checked_before_anything_loads(tmp_path):
    model = _encoder_and_head(0)
    model.encoder.requires_grad_(False)
    opt = torch.optim.AdamW(model.head.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    frozen = _frozen("a" * 64)
    last = ckpt.save_training_state(tmp_path / "last.pt", model, opt, None, None, step=1, epoch=0, frozen=frozen)
    best = ckpt.save_model_state(tmp_path / "best.pt", model, step=1, epoch=1, extra=None, frozen=frozen)
    for path in (last, best):
        raw = torch.load(path, weights_only=True)
        assert sorted(raw["model"]) == ["head.bias", "head.weight"] and raw["version"] == 2
        assert raw["frozen"] == {"prefixes": ["encoder."], "identity": {"source": "hf:enc", "sha256": "a" * 64}}
    state = ckpt.load_training_state(last)

    # the model rebuilt from the same source: the head comes from last.pt, the encoder stays the source's
    resumed = _encoder_and_head(1)
    resumed.encoder.load_state_dict(model.encoder.state_dict())
    ckpt.restore_training_state(state, resumed, torch.optim.AdamW(resumed.head.parameters()), frozen=frozen)
    assert _same(resumed, model.state_dict())

    # another encoder, or one the model does not name as frozen: refused, the model untouched
    other = _encoder_and_head(2)
    untouched = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ModelError, match=r"differ from those .*last.pt was saved with \(sha256: saved 'aaaaaaaaaaaa"):
        ckpt.restore_training_state(state, other, frozen=_frozen("b" * 64), source=str(last))
    with pytest.raises(ModelError, match="leaves out frozen weights"):
        ckpt.restore_training_state(state, other)
    assert _same(other, untouched)


def test_a_checkpoint_holding_frozen_weights_restores_when_they_are_the_models(tmp_path):
    model = _encoder_and_head(0)
    path = ckpt.save_training_state(tmp_path / "last.pt", model, None, None, None, step=1, epoch=0)  # version 1
    state = ckpt.load_training_state(path)
    assert state["version"] == 1 and "encoder.weight" in state["model"]
    same = _encoder_and_head(1)
    same.encoder.load_state_dict(model.encoder.state_dict())
    ckpt.restore_training_state(state, same, frozen=_frozen("a" * 64))
    assert _same(same, model.state_dict())
    other = _encoder_and_head(2)
    untouched = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ModelError, match=r"differ from those the checkpoint holds .*Restore the encoder files"):
        ckpt.restore_training_state(state, other, frozen=_frozen("a" * 64))
    assert _same(other, untouched)


def test_policy_by_steps_and_minutes():
    now = [0.0]
    policy = ckpt.CheckpointPolicy(every_steps=3, every_minutes=2, clock=lambda: now[0])
    assert [s for s in range(1, 10) if policy.should_save(s)] == [3, 6, 9]
    now[0] = 119.0
    assert not policy.should_save(4)
    now[0] = 121.0
    assert policy.should_save(4)
    policy.mark_saved(4)
    assert not policy.should_save(5)
    with pytest.raises(ConfigError):
        ckpt.CheckpointPolicy(every_steps=0)


def test_best_tracker_and_early_stopping_state_round_trip():
    best = ckpt.BestTracker("val_auc", "max", min_delta=0.01)
    assert best.update(0.5, epoch=1, step=10) and not best.update(0.505, epoch=2, step=20)
    assert best.update(0.7, epoch=3, step=30) and (best.best, best.best_epoch) == (0.7, 3)
    assert not best.update(math.nan, epoch=4, step=40)
    es = ckpt.EarlyStopping(patience=2, mode="min")
    assert [es.step(v) for v in (1.0, 0.9, 0.95)] == [False, False, False]
    saved = es.state_dict()
    restored = ckpt.EarlyStopping(patience=2, mode="min")
    restored.load_state_dict(saved)
    assert restored.step(0.91) is True and restored.stopped
    with pytest.raises(ConfigError, match=r"max.*min"):
        ckpt.EarlyStopping(patience=1, mode="up")


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_checkpoints_weights_only(name, tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    sched = make_scheduler(name, opt, total_steps=20, step_size=5, monitor="val_loss", patience=0)
    for _ in range(6):
        opt.step()
        sched.step_batch()
    sched.step_epoch({"val_loss": 1.0})
    ckpt.save_training_state(tmp_path / "s.pt", model, opt, sched, None, step=6, epoch=0)
    opt2 = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    sched2 = make_scheduler(name, opt2, total_steps=20, step_size=5, monitor="val_loss", patience=0)
    ckpt.restore_training_state(ckpt.load_training_state(tmp_path / "s.pt"), model, opt2, sched2)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_schedule_shapes():
    def lrs(name, steps, **kw):
        opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        sched = make_scheduler(name, opt, **kw)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_batch()
        return out

    assert lrs("none", 3) == [1.0, 1.0, 1.0]
    assert lrs("none", 4, warmup_steps=3) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs("step", 5, step_size=2, gamma=0.5) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    cos = lrs("cosine", 11, total_steps=10, warmup_steps=0, min_lr_ratio=0.1)
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.55) and cos[10] == pytest.approx(0.1)
    one = lrs("onecycle", 10, total_steps=10)
    assert max(one) == pytest.approx(1.0) and one[0] < 0.1 and one[-1] < 0.01
    with pytest.raises(ConfigError, match="Unknown LR schedule"):
        lrs("linear", 1)
    with pytest.raises(ConfigError, match="warmup"):
        lrs("plateau", 1, warmup_steps=2)
    with pytest.raises(ConfigError, match="total_steps"):
        lrs("cosine", 1)


def test_plateau_needs_its_metric():
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    sched = make_scheduler("plateau", opt, monitor="val_loss", patience=0, factor=0.5)
    sched.step_epoch({"val_loss": 1.0})
    sched.step_epoch({"val_loss": 2.0})
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(ConfigError, match="val_loss"):
        sched.step_epoch({"val_auc": 0.5})


def test_unwrap_model_strips_wrappers():
    inner = torch.nn.Linear(1, 1)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = inner

    assert ckpt.unwrap_model(Wrapper()) is inner and ckpt.unwrap_model(inner) is inner
