"""MAML adaptation, batch independence, BatchNorm handling, engine choice and configuration errors."""

from __future__ import annotations

import copy
import logging
import sys

import pytest
import torch
from torch import nn

import cxr_tools.methods.maml as maml
from cxr_tools.errors import ConfigError, DependencyError, ModelError
from cxr_tools.methods.maml import (
    LEARN2LEARN_INSTALL,
    MamlConfig,
    adapt,
    frozen_batchnorm,
    meta_loss,
    meta_step,
    multilabel_bce,
    resolve_engine,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 2),
    ).double()  # fmt: skip


def bn_model(seed: int = 0, track: bool = True) -> nn.Module:
    """A BatchNorm model in train mode, with non-trivial running statistics as a pre-trained one would have."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=track), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2),
    ).double()  # fmt: skip
    if track:
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
    return model.train()


def episode(seed: int, support: int = 6, query: int = 8):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(support, 1, 16, 16, generator=g, dtype=torch.float64)
    qx = torch.randn(query, 1, 16, 16, generator=g, dtype=torch.float64)
    sy = (torch.rand(support, 2, generator=g) > 0.5).double()
    qy = (torch.rand(query, 2, generator=g) > 0.5).double()
    return sx, sy, qx, qy


def test_adaptation_reduces_support_loss_and_leaves_the_model_alone():
    model = gn_model()
    before = copy.deepcopy(model.state_dict())
    sx, sy, _, _ = episode(1)
    with torch.no_grad():  # evaluation code may run under no_grad; adaptation must still work
        adapted = adapt(model, sx, sy, MamlConfig(inner_lr=0.5, adapt_steps=5))
    losses = adapted.support_losses
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.01
    assert float(multilabel_bce(adapted(sx), sy)) == pytest.approx(losses[-1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not p.requires_grad for p in adapted.params.values())


def test_adapted_module_copy_scores_like_the_adapted_model():
    model = bn_model()
    sx, sy, qx, _ = episode(2)
    adapted = adapt(model, sx, sy, MamlConfig(inner_lr=0.3, adapt_steps=2))
    standalone = adapted.to_module().eval()
    torch.testing.assert_close(standalone(qx), adapted(qx), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(model.eval()(qx), adapted(qx))


@pytest.mark.parametrize("make", [gn_model, bn_model])
def test_a_query_scores_the_same_alone_and_in_a_batch(make):
    model = make()
    sx, sy, qx, _ = episode(3)
    adapted = adapt(model, sx, sy, MamlConfig(inner_lr=0.3, adapt_steps=3))
    batched = adapted(qx)
    alone = torch.cat([adapted(qx[i : i + 1]) for i in range(len(qx))])
    torch.testing.assert_close(alone, batched, rtol=1e-12, atol=1e-12)
    reordered = adapted(qx.flip(0)).flip(0)
    torch.testing.assert_close(reordered, batched, rtol=1e-12, atol=1e-12)


def test_batch_statistics_would_break_batch_independence():
    """Control for the test above: a train-mode BatchNorm forward without the helper does depend on batch-mates."""
    model = bn_model()
    _, _, qx, _ = episode(3)
    with torch.no_grad():
        assert not torch.allclose(model(qx[:1]), model(qx)[:1])
        with frozen_batchnorm(model):
            torch.testing.assert_close(model(qx[:1]), model(qx)[:1], rtol=1e-12, atol=1e-12)
    assert model[1].training


def test_meta_step_query_logits_match_evaluation_adaptation(engine):
    model = bn_model()
    task = episode(4)
    cfg = MamlConfig(inner_lr=0.3, adapt_steps=2, engine=engine)
    _, info = meta_loss(model, [task], cfg)
    torch.testing.assert_close(info.tasks[0].query_logits, adapt(model, task[0], task[1], cfg)(task[2]))


@pytest.mark.parametrize("first_order", [False, True])
def test_batchnorm_running_stats_untouched_by_a_meta_step(engine, first_order):
    model = bn_model()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    meta_step(model, opt, [episode(5), episode(6)], MamlConfig(0.3, 2, first_order, engine))
    adapt(model, *episode(7)[:2], MamlConfig(0.3, 2))
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert model[1].training  # the caller's mode is restored
    assert not torch.equal(model[1].weight.detach(), torch.ones(4, dtype=torch.float64))  # BN affine still learns


def test_learn2learn_clones_share_batchnorm_buffers_without_the_helper():
    """Control: why the helper exists — a learn2learn clone in train mode writes the model's running stats."""
    l2l = pytest.importorskip("learn2learn")
    model = bn_model()
    mean = model[1].running_mean.clone()
    l2l.algorithms.MAML(model, lr=0.1).clone()(episode(8)[0])
    assert not torch.equal(model[1].running_mean, mean)


def test_batchnorm_without_running_stats_is_refused():
    model = bn_model(track=False)
    sx, sy, qx, qy = episode(9)
    with pytest.raises(ModelError, match="track_running_stats=False"):
        adapt(model, sx, sy, MamlConfig())
    with pytest.raises(ModelError, match="GroupNorm"):
        meta_loss(model, [(sx, sy, qx, qy)], MamlConfig(engine="func"))


def test_missing_learn2learn_says_how_to_install(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "learn2learn", None)
    with pytest.raises(DependencyError) as err:
        resolve_engine("learn2learn")
    text = str(err.value)
    assert LEARN2LEARN_INSTALL in text and "make demo" in text
    assert LEARN2LEARN_INSTALL == (
        "pip install --no-deps learn2learn==0.2.0 --config-settings=--build-option=build_ext "
        "&& pip install gym scipy tqdm requests"
    )
    with pytest.raises(DependencyError):
        meta_loss(gn_model(), [episode(10)], MamlConfig(engine="learn2learn"))
    with caplog.at_level(logging.INFO, logger="cxr_tools.methods.maml"):
        assert resolve_engine("auto") == "func"
    assert "auto -> func" in caplog.text
    model = gn_model()
    info = meta_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [episode(10)], MamlConfig(engine="auto"))
    assert info.engine == "func"


def test_auto_prefers_learn2learn_when_installed():
    pytest.importorskip("learn2learn")
    assert resolve_engine("auto") == "learn2learn"
    assert resolve_engine("higher") == "higher"


@pytest.mark.parametrize(
    "kwargs", [{"inner_lr": -0.1}, {"inner_lr": float("nan")}, {"adapt_steps": -1}, {"engine": "jax"}]
)
def test_bad_config_is_a_clear_error(kwargs):
    with pytest.raises(ConfigError):
        MamlConfig(**kwargs)


def test_empty_meta_batch_is_a_clear_error():
    with pytest.raises(ConfigError, match="at least one task"):
        meta_loss(gn_model(), [], MamlConfig(engine="func"))


def test_loss_masks_unknown_targets_and_checks_shapes():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=torch.float64)
    loss = multilabel_bce(logits, targets)
    rows, cols = [0, 1, 1], [0, 0, 1]
    known = torch.nn.functional.binary_cross_entropy_with_logits(logits[rows, cols], targets[rows, cols])
    assert loss.item() == pytest.approx(known.item())
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 0] != 0
    with pytest.raises(ModelError, match="one output per episode class"):
        multilabel_bce(torch.zeros(3, 5), torch.zeros(3, 2))


def test_package_exports_resolve():
    assert all(getattr(maml, name) is not None for name in maml.__all__)
