"""Every zoo model: shapes, one grey channel, embedding size = card, batch independence."""

from __future__ import annotations

import pytest
import torch

from cxr_tools.models import create_model, freeze_batchnorm, has_batchnorm, list_models, model_card

torch.set_num_threads(1)
ALL = list_models()
SIZE = 64


def _images(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ALL)
def test_output_and_feature_shapes_match_card(name):
    card = model_card(name)
    model = create_model(name, num_classes=3).eval()
    x = _images(2, 0)
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        assert model.forward_features(x).shape == (2, card.num_features)
    assert card.in_chans == 1
    assert model.in_chans == 1


@pytest.mark.parametrize("name", ALL)
def test_num_classes_zero_returns_embedding(name):
    model = create_model(name, num_classes=0).eval()
    with torch.no_grad():
        out = model(_images(2, 1))
    assert out.shape == (2, model_card(name).num_features)


@pytest.mark.parametrize("name", ALL)
def test_rgb_input_is_rejected(name):
    model = create_model(name).eval()
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("name", ALL)
def test_eval_scores_do_not_depend_on_batch_mates(name):
    model = create_model(name, num_classes=2).eval()
    query = _images(1, 2)
    others = _images(5, 3) * 0.5 + 0.3
    with torch.no_grad():
        alone = model(query)
        inside = model(torch.cat([others[:2], query, others[2:]]))[2:3]
    torch.testing.assert_close(alone, inside, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["conv4", "conv4-tiny"])
def test_conv4_default_is_batch_independent_in_train_mode(name):
    assert model_card(name).norm == "group"
    model = create_model(name, num_classes=2).train()
    query = _images(1, 4)
    with torch.no_grad():
        alone = model(query)
        inside = model(torch.cat([_images(3, 5), query]))[3:]
    torch.testing.assert_close(alone, inside, atol=1e-5, rtol=1e-5)


def test_batchnorm_in_train_mode_would_leak_and_freeze_batchnorm_stops_it():
    model = create_model("conv4-tiny", num_classes=2, norm="batch")
    assert has_batchnorm(model) and not has_batchnorm(create_model("conv4-tiny"))
    query = _images(1, 6)
    batch = torch.cat([_images(3, 7), query])
    model.train()
    with torch.no_grad():
        leaked = model(batch)[3:]
        freeze_batchnorm(model)
        frozen_alone, frozen_inside = model(query), model(batch)[3:]
    assert not torch.allclose(leaked, frozen_alone, atol=1e-4)
    torch.testing.assert_close(frozen_alone, frozen_inside, atol=1e-5, rtol=1e-5)
    assert model.training  # only the BatchNorm layers were switched


def test_freeze_batchnorm_keeps_running_stats_and_can_freeze_affine():
    model = create_model("resnet-tiny", num_classes=1).train()
    freeze_batchnorm(model, freeze_affine=True)
    before = model.bn1.running_mean.clone()
    model(_images(4, 8, 32)).sum().backward()
    assert torch.equal(before, model.bn1.running_mean)
    assert model.bn1.weight.grad is None and model.conv1.weight.grad is not None


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
def test_conv4_norm_override(norm):
    model = create_model("conv4-tiny", norm=norm, num_classes=1)
    assert model.norm == norm
    assert model(_images(2, 9, 32)).shape == (2, 1)


@pytest.mark.parametrize("size", [48, 64, 96])
def test_densenet_head_fits_any_input_size(size):
    model = create_model("densenet-tiny", num_classes=4).eval()
    assert model(_images(1, 10, size)).shape == (1, 4)


def test_reset_head_changes_outputs_but_not_features():
    model = create_model("conv4-tiny", num_classes=2).eval()
    x = _images(2, 11, 32)
    feats = model.forward_features(x)
    model.reset_head(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    torch.testing.assert_close(model.forward_features(x), feats)
    model.reset_head(0)
    torch.testing.assert_close(model(x), feats)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_full_size_models_at_224(name):
    model = create_model(name, num_classes=14).eval()
    with torch.no_grad():
        assert model(_images(1, 12, 224)).shape == (1, 14)


def test_freeze_features_trains_the_head_only_and_keeps_the_rest_in_eval_mode():
    from cxr_tools.models.backbones import freeze_features

    model = create_model("simple-cnn", num_classes=2)
    freeze_features(model).train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    assert model.head.training and not model.features.training and not model.drop.training
    model(torch.rand(4, 1, 32, 32)).sum().backward()  # BatchNorm statistics and dropout stay frozen
    assert torch.equal(bn.running_mean, before) and model.features[0].weight.grad is None
