"""The run lifecycle every trainer shares (runtime/lifecycle.py): opening a run on every rank, the weights that
become the model, the model card, and one set of run options for all three trainers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cxr_tools.errors import ModelError, OutputExistsError
from cxr_tools.models.checkpoints import model_meta
from cxr_tools.runtime import distributed, lifecycle
from cxr_tools.runtime.checkpointing import save_model_state
from cxr_tools.runtime.distributed import DistInfo
from cxr_tools.runtime.options import RunOptions, TrainingOptions
from cxr_tools.runtime.rundir import open_run


@dataclasses.dataclass(frozen=True)
class _Config(RunOptions):
    output: Path
    width: int = 3


def _ctx(rank: int = 0, world_size: int = 1) -> lifecycle.RuntimeContext:
    return lifecycle.RuntimeContext(torch.device("cpu"), "cpu", DistInfo(rank, world_size, rank), owns_group=False)


def test_a_refused_run_directory_raises_the_same_error_on_every_rank(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = lifecycle.open_run_dir(_Config(output=out), "train", _ctx())
    run.set_status("completed")
    with pytest.raises(OutputExistsError, match="completed"):  # one process: the error itself
        lifecycle.open_run_dir(_Config(output=out), "train", _ctx())

    # Rank 1 of 2 opens nothing itself; rank 0's refusal reaches it through the broadcast, same class and hint.
    sent = ("OutputExistsError", f"{out} holds a completed `cxr train` run.", "Pass --overwrite.")
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, info=None, src=0: sent)
    with pytest.raises(OutputExistsError, match="completed") as caught:
        lifecycle.open_run_dir(_Config(output=out), "train", _ctx(rank=1, world_size=2))
    assert caught.value.hint == "Pass --overwrite."
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, info=None, src=0: None)
    assert lifecycle.open_run_dir(_Config(output=out), "train", _ctx(rank=1, world_size=2)).path == out.resolve()


def test_load_selected_takes_best_pt_when_there_is_one(tmp_path):
    run = open_run(tmp_path / "run", "train", {"x": 1})
    model = torch.nn.Linear(2, 1)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    assert lifecycle.load_selected(run, model) == "last"  # no best.pt: the final weights stay
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())

    best = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(best.weight, 0.5)
    save_model_state(run.best_checkpoint, best, epoch=1, step=7, extra=None)
    assert lifecycle.load_selected(run, model) == "best"
    assert torch.equal(model.weight, best.weight)
    assert lifecycle.best_step(run) == 7
    with pytest.raises(ModelError, match="does not fit"):
        lifecycle.load_selected(run, torch.nn.Linear(3, 1))


class _Cache:
    def __init__(self) -> None:
        self.manifest_hash = "abc123"
        self.image_shape = (32, 32)
        self.manifest = {"preprocessing": {"clahe": True}}


def test_model_meta_describes_the_input_contract_and_the_cache():
    model = torch.nn.Linear(2, 1)
    model.normalisation = "xrv"
    model.pretrained = "xrv"
    meta = model_meta(_Cache(), model, ("A", "B"), "supervised", {"best_epoch": 2})
    assert meta == {
        "labels": ["A", "B"],
        "training": "supervised",
        "cache_manifest_hash": "abc123",
        "image_size": 32,
        "normalisation": "xrv",
        "preprocessing": {"clahe": True},
        "pretrained": "xrv",
        "extra": {"best_epoch": 2},
    }


def test_every_trainer_takes_the_shared_run_options():
    from cxr_tools.engine.meta_train import MetaTrainConfig
    from cxr_tools.engine.train import TrainConfig
    from cxr_tools.engine.train_siamese import SiameseConfig

    shared = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    assert {"device", "seed", "checkpoint_every_steps", "checkpoint_every_minutes", "log_every_steps"} <= set(shared)
    for cls in (TrainConfig, SiameseConfig, MetaTrainConfig):
        assert issubclass(cls, RunOptions)
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert {k: fields[k] for k in shared if k != "log_every_steps"} == {
            k: v for k, v in shared.items() if k != "log_every_steps"
        }
    assert issubclass(TrainConfig, TrainingOptions) and issubclass(SiameseConfig, TrainingOptions)
    assert not set(shared) & set(MetaTrainConfig.__annotations__) - {"log_every_steps"}  # inherited, not re-declared


def test_run_in_context_seeds_and_returns_the_body_result():
    options = RunOptions(device="cpu", seed=11)
    first = lifecycle.run_in_context(options, lambda ctx: (ctx.device.type, ctx.owns_group, torch.rand(3)))
    second = lifecycle.run_in_context(options, lambda ctx: torch.rand(3))
    assert first[:2] == ("cpu", False) and torch.equal(first[2], second)
