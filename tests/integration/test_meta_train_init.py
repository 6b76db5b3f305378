"""`cxr meta-train --init`: start from a supervised or Siamese run's backbone; refuse runs that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from meta_train_fixtures import tiny_cache, tiny_config

from cxr_tools.engine.meta_train import meta_train
from cxr_tools.errors import ModelError
from cxr_tools.models import create_model, load_model_dir, read_model_meta, save_model_dir
from cxr_tools.models.factory import initial_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tiny_cache(tmp_path_factory.mktemp("init"))


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def _assert_backbone_from(model: torch.nn.Module, source: torch.nn.Module) -> None:
    want = _backbone(source.state_dict())
    got = model.state_dict()
    assert want and all(torch.equal(got[k], v) for k, v in want.items())


@pytest.fixture(scope="module")
def supervised_run(cache, tmp_path_factory) -> Path:
    from cxr_tools.engine.train import TrainConfig, train

    run = tmp_path_factory.mktemp("sup") / "run"
    cfg = TrainConfig(
        cache=cache, output=run, model="conv4-tiny", classes=("A", "B", "C"), epochs=1, max_steps=2, batch_size=8,
        augment=False, device="cpu", threads=1, schedule="none", seed=1,
    )  # fmt: skip
    assert train(cfg).status == "completed"
    return run


def build_model(cfg, image_size):
    """The model ``cxr meta-train`` starts from for ``cfg`` (its --init, --backbone and --ways)."""
    return initial_model(cfg.init, cfg.backbone, cfg.ways, image_size)


def test_init_from_a_supervised_run_takes_its_backbone_and_trains(cache, supervised_run, tmp_path):
    source, meta = load_model_dir(supervised_run)
    assert meta["training"] == "supervised" and meta["num_classes"] == 3
    model, origin = build_model(tiny_config(cache, tmp_path / "x", init=str(supervised_run)), 32)
    assert model.num_classes == 2 and origin["init_training"] == "supervised"
    _assert_backbone_from(model, source)
    result = meta_train(tiny_config(cache, tmp_path / "run", init=str(supervised_run), episodes=2, val_episodes=0))
    assert result.status == "completed"
    card = read_model_meta(tmp_path / "run")
    assert card["extra"]["init"] == str(supervised_run) and card["extra"]["init_training"] == "supervised"


def test_init_from_a_siamese_run_takes_the_backbone_inside_it(cache, tmp_path):
    from cxr_tools.engine.train_siamese import SiameseConfig, train_siamese

    run = tmp_path / "siamese"
    cfg = SiameseConfig(
        cache=cache, output=run, backbone="conv4-tiny", embedding_dim=16, epochs=1, max_steps=1, batch_size=8,
        val_pairs=8, pairs_per_epoch=16, device="cpu", threads=1, schedule="none", seed=2,
    )  # fmt: skip
    assert train_siamese(cfg).status == "completed"
    source, meta = load_model_dir(run)
    assert meta["training"] == "siamese"
    model, origin = build_model(tiny_config(cache, tmp_path / "x", init=str(run)), 32)
    assert origin["init_training"] == "siamese" and model.num_classes == 2
    _assert_backbone_from(model, source)


def test_init_with_another_image_size_fails_clearly(cache, tmp_path):
    save_model_dir(
        create_model("conv4-tiny", num_classes=3), {"training": "supervised", "image_size": 64}, tmp_path / "m"
    )
    with pytest.raises(ModelError, match="64 px"):
        build_model(tiny_config(cache, tmp_path / "x", init=str(tmp_path / "m")), 32)


def test_init_with_another_backbone_fails_clearly(cache, tmp_path):
    save_model_dir(create_model("conv4", num_classes=3), {"training": "supervised", "image_size": 32}, tmp_path / "m")
    with pytest.raises(ModelError, match="holds a conv4 backbone but --backbone is conv4-tiny"):
        build_model(tiny_config(cache, tmp_path / "x", init=str(tmp_path / "m")), 32)
    # Without --backbone the architecture follows the run.
    model, _ = build_model(tiny_config(cache, tmp_path / "x", init=str(tmp_path / "m"), backbone=None), 32)
    assert model.model_name == "conv4" and model.num_classes == 2


def test_init_that_is_not_a_run_or_has_no_imagenet_weights_fails_clearly(cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        build_model(tiny_config(cache, tmp_path / "x", init=str(tmp_path / "empty")), 32)
    with pytest.raises(ModelError, match="does not exist"):
        build_model(tiny_config(cache, tmp_path / "x", init=str(tmp_path / "missing")), 32)
    with pytest.raises(ModelError, match="no pretrained weights 'imagenet'"):
        build_model(tiny_config(cache, tmp_path / "x", init="imagenet"), 32)
