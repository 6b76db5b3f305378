"""MAML meta-gradients are right: the four engines agree, every meta-parameter learns, finite differences match.

These are the proofs docs/science.md relies on; the seed project's ``copy_initial_weights=True`` fails them.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from cxr_tools.methods.maml import MamlConfig, adapt, meta_backward, meta_loss, meta_step, params_without_meta_grad
from cxr_tools.methods.maml.batched import broadcast_params
from cxr_tools.methods.maml.engines import higher_task
from cxr_tools.methods.maml.functional import batched_forward, inner_loop, trainable_params
from cxr_tools.methods.maml.losses import multilabel_bce

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, n_out: int = 2) -> nn.Module:
    """1→4 conv, GroupNorm, smooth activation, linear head: [B,1,16,16] → [B,n_out], float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, n_out),
    ).double()


def episode(seed: int, n: int = 2, support: int = 6, query: int = 8):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(support, 1, 16, 16, generator=g, dtype=torch.float64)
    qx = torch.randn(query, 1, 16, 16, generator=g, dtype=torch.float64)
    sy = (torch.rand(support, n, generator=g) > 0.5).double()
    qy = (torch.rand(query, n, generator=g) > 0.5).double()
    return sx, sy, qx, qy


def meta_grad(model: nn.Module, tasks, cfg: MamlConfig) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss, _ = meta_loss(model, tasks, cfg)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("first_order", [False, True])
def test_engines_give_the_same_meta_gradient(first_order):
    pytest.importorskip("learn2learn", reason="learn2learn not installed (make setup installs it)")
    model = tiny_model()
    tasks = [episode(1), episode(2)]
    engines = ("learn2learn", "higher", "func", "vmap")
    grads = {e: meta_grad(model, tasks, MamlConfig(0.3, 3, first_order, e)) for e in engines}
    assert grads["func"].norm() > 1e-3
    for e in ("learn2learn", "higher", "vmap"):
        torch.testing.assert_close(grads[e], grads["func"], rtol=1e-6, atol=1e-12, msg=f"{e} vs func")


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_learn2learn_with_tasks_of_unequal_size(first_order, caplog):
    """Four tasks, two of them with other support/query sizes: grouped by shape, each group batched."""
    pytest.importorskip("learn2learn", reason="learn2learn not installed (make setup installs it)")
    model = tiny_model(seed=1)
    tasks = [episode(11), episode(12, support=4), episode(13), episode(14, query=5)]
    ref = meta_grad(model, tasks, MamlConfig(0.3, 3, first_order, "learn2learn"))
    with caplog.at_level(logging.DEBUG, logger="cxr_tools.methods.maml.batched"):
        got = meta_grad(model, tasks, MamlConfig(0.3, 3, first_order, "vmap"))
    assert "4 tasks in 3 groups of equal shapes" in caplog.text
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-12)
    model.zero_grad(set_to_none=True)
    info = meta_backward(model, tasks, MamlConfig(0.3, 3, first_order, "vmap"))
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in model.parameters()]), ref, rtol=1e-5, atol=1e-12)
    assert [t.query_logits.shape[0] for t in info.tasks] == [8, 8, 8, 5]


def test_batched_inner_loop_adapts_each_task_as_adapt_does():
    """The reusable batched inner loop (for evaluation too): task t's adapted weights are adapt()'s on task t."""
    model = tiny_model(seed=2)
    tasks = [episode(15), episode(16), episode(17)]
    cfg = MamlConfig(0.5, 3, True, "func")
    start = broadcast_params(trainable_params(model), len(tasks))
    with torch.enable_grad():
        params, losses = inner_loop(
            model,
            start,
            torch.stack([t[0] for t in tasks]),
            torch.stack([t[1] for t in tasks]),
            lr=cfg.inner_lr,
            steps=cfg.adapt_steps,
            loss_fn=multilabel_bce,
            create_graph=False,
            batched=True,
        )
        queries = batched_forward(model, params, torch.stack([t[2] for t in tasks]))
    assert len(losses) == 3 and losses[0].shape == (3,)
    for t, (sx, sy, _, _) in enumerate(tasks):
        single = adapt(model, sx, sy, cfg)
        for name, value in single.params.items():
            torch.testing.assert_close(params[name][t], value, rtol=1e-10, atol=1e-13)
        assert [float(step[t]) for step in losses] == pytest.approx(single.support_losses[:-1], rel=1e-10)
        torch.testing.assert_close(queries[t], single(tasks[t][2]), rtol=1e-10, atol=1e-13)


def test_engines_agree_with_a_frozen_layer(engine):
    model = tiny_model()
    model[0].requires_grad_(False)
    tasks = [episode(3)]
    got = meta_grad_trainable(model, tasks, MamlConfig(0.3, 2, False, engine))
    ref = meta_grad_trainable(model, tasks, MamlConfig(0.3, 2, False, "func"))
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-12)
    assert model[0].weight.grad is None


def meta_grad_trainable(model, tasks, cfg):
    model.zero_grad(set_to_none=True)
    loss, _ = meta_loss(model, tasks, cfg)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_meta_backward_equals_meta_loss_backward(engine):
    model = tiny_model()
    tasks = [episode(4), episode(5), episode(6)]
    cfg = MamlConfig(0.3, 2, False, engine)
    ref = meta_grad(model, tasks, cfg)
    model.zero_grad(set_to_none=True)
    info = meta_backward(model, tasks, cfg)
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
    assert info.engine == engine and len(info.tasks) == 3
    assert info.loss == pytest.approx(sum(t.query_loss for t in info.tasks) / 3)
    assert all(len(t.support_losses) == 2 and t.query_logits.shape == (8, 2) for t in info.tasks)


@pytest.mark.parametrize("first_order", [False, True])
def test_every_meta_parameter_changes_after_one_meta_step(engine, first_order):
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    meta_step(model, opt, [episode(7), episode(8)], MamlConfig(0.1, 2, first_order, engine))
    assert params_without_meta_grad(model) == []
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []


def test_copy_initial_weights_true_would_be_caught():
    """The seed bug: higher with copy_initial_weights=True detaches θ, so no meta-gradient reaches the model."""
    model = tiny_model()
    cfg = MamlConfig(0.1, 2, False, "higher")
    out = higher_task(model, episode(9), cfg, multilabel_bce, _copy_initial_weights=True)
    out.query_loss.backward()
    names = [n for n, _ in model.named_parameters()]
    assert params_without_meta_grad(model) == names  # the check used above flags every parameter
    before = copy.deepcopy(model.state_dict())
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def post_adaptation_query_loss(model: nn.Module, theta: torch.Tensor, task, cfg: MamlConfig) -> float:
    probe = copy.deepcopy(model)
    vector_to_parameters(theta, probe.parameters())
    sx, sy, qx, qy = task
    with torch.no_grad():
        return float(multilabel_bce(adapt(probe, sx, sy, cfg)(qx), qy))


def test_second_order_meta_gradient_matches_finite_differences(engine):
    model = tiny_model(seed=3)
    task = episode(10)
    cfg = MamlConfig(0.5, 3, False, engine)
    grad = meta_grad(model, [task], cfg)
    theta = parameters_to_vector(model.parameters()).detach()
    g = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(4):
        d = torch.randn(theta.shape, generator=g, dtype=torch.float64)
        d /= d.norm()
        plus = post_adaptation_query_loss(model, theta + eps * d, task, cfg)
        minus = post_adaptation_query_loss(model, theta - eps * d, task, cfg)
        fd = (plus - minus) / (2 * eps)
        assert float(grad @ d) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_first_order_is_the_query_gradient_at_the_adapted_parameters(engine):
    model = tiny_model(seed=3)
    task = episode(10)
    so = meta_grad(model, [task], MamlConfig(0.5, 3, False, engine))
    fo = meta_grad(model, [task], MamlConfig(0.5, 3, True, engine))
    assert (fo - so).norm() / so.norm() > 0.05  # the dropped second-order terms matter at this step size

    sx, sy, qx, qy = task
    adapted = adapt(model, sx, sy, MamlConfig(0.5, 3, True, "func")).params
    leaves = {n: p.clone().requires_grad_() for n, p in adapted.items()}
    query_loss = multilabel_bce(functional_call(model, leaves, (qx,)), qy)
    at_adapted = torch.autograd.grad(query_loss, list(leaves.values()))
    torch.testing.assert_close(fo, torch.cat([g.flatten() for g in at_adapted]), rtol=1e-9, atol=1e-13)
