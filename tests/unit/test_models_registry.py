"""The registry: create_model overrides, list_models patterns, cards, errors with suggestions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cxr_tools.errors import ModelError
from cxr_tools.models import NORMALISATIONS, create_model, is_model, list_models, model_card, normalise
from cxr_tools.models.registry import register_model

REQUIRED = {"conv4", "conv4-tiny", "simple-cnn", "resnet18", "resnet50", "densenet121", "resnet-tiny"}


def test_zoo_holds_the_required_entries():
    assert set(list_models()) >= REQUIRED
    assert list_models() == sorted(list_models())


def test_list_models_patterns():
    assert list_models("resnet*") == ["resnet-tiny", "resnet18", "resnet50"]
    assert list_models("tiny") == ["conv4-tiny", "densenet-tiny", "resnet-tiny"]
    assert list_models("nothing-like-this") == []


def test_none_overrides_keep_recipe_defaults():
    model = create_model("conv4-tiny", num_classes=None, norm=None, hidden=None)
    assert model.num_classes == 1 and model.norm == "group" and model.num_features == 8
    assert model.model_args == {}
    model = create_model("conv4-tiny", num_classes=3, hidden=16)
    assert model.num_features == 16 and model.model_args == {"num_classes": 3, "hidden": 16}
    assert model.model_name == "conv4-tiny"


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError) as err:
        create_model("resnet-18")
    assert "resnet18" in str(err.value)
    with pytest.raises(ModelError, match="Unknown model"):
        model_card("zzzz")
    assert not is_model("zzzz") and is_model("conv4")


def test_unknown_option_and_bad_value_are_model_errors():
    with pytest.raises(ModelError, match=r"does not accept.*widht"):
        create_model("conv4", widht=3)
    with pytest.raises(ModelError, match="norm"):
        create_model("conv4-tiny", norm="layer")
    with pytest.raises(ModelError, match=r"no pretrained weights 'xrv'.*imagenet"):
        create_model("resnet18", weights="xrv")
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model("conv4", weights="imagenet")


def test_weights_none_string_means_random_init():
    model = create_model("resnet-tiny", weights=None)
    assert model.pretrained is None and model.normalisation == "unit"
    assert create_model("densenet121", weights="none").pretrained is None


def test_cards_are_frozen_and_counted():
    card = model_card("conv4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.name = "x"  # type: ignore[misc]
    model = create_model("conv4")
    assert card.num_params == sum(p.numel() for p in model.parameters())
    assert (card.family, card.in_chans, card.num_features, card.norm) == ("conv4", 1, 64, "group")
    assert {w.name for w in model_card("densenet121").weights} == {
        "imagenet",
        "xrv",
        "xrv-nih",
        "xrv-pc",
        "xrv-chex",
        "xrv-mimic_ch",
        "xrv-mimic_nb",
        "xrv-rsna",
    }
    assert model_card("densenet121").weight_source("xrv").normalisation == "xrv"


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_model("conv4", family="conv4")(lambda: torch.nn.Identity())


def test_normalise_ranges():
    x = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(normalise(x, "xrv"), torch.tensor([-1024.0, 1024.0]))
    torch.testing.assert_close(normalise(x, "unit"), x)
    torch.testing.assert_close(normalise(torch.tensor([0.449]), "imagenet"), torch.tensor([0.0]))
    assert set(NORMALISATIONS) == {"unit", "imagenet", "xrv"}
    with pytest.raises(ModelError):
        normalise(x, "zscore")
