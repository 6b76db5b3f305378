"""The functional core of MAML: parameters as a name → tensor mapping, updated out of place.

Model-Agnostic Meta-Learning (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", ICML) adapts parameters θ to a task with a few SGD steps on its support set,
θ'_{k+1} = θ'_k − α ∇L_support(θ'_k), θ'_0 = θ, and meta-learns θ through the query loss L_query(θ'_K). Keeping
every θ'_k a function of θ (never an in-place update) is what lets autograd carry the meta-gradient back to θ;
``create_graph=True`` keeps the second-order terms, ``False`` gives first-order MAML (FOMAML, Finn et al. 2017
§5.2; Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms"), whose meta-gradient is
∇L_query evaluated at θ'_K.

This is learn2learn's ``maml_update`` in functional form, run with :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from cxr_tools.methods.maml.config import MamlConfig
from cxr_tools.methods.maml.losses import LossFn

Params = dict[str, Tensor]


def trainable_params(model: nn.Module) -> Params:
    """The meta-parameters: every parameter of ``model`` that requires grad, by name (frozen ones are left out)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``model(x)`` with ``params`` in place of the same-named parameters (the others, and buffers, unchanged)."""
    return functional_call(model, params, (x,))


def sgd_update(params: Params, grads: Sequence[Tensor | None], lr: float) -> Params:
    """One out-of-place SGD step ``θ − lr·g``; a parameter without gradient (unused) is kept as it is."""
    return {name: p if g is None else p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


def batched_forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Logits ``[T, B, N]`` of ``model`` on images ``x [T, B, ...]``, task t with parameters ``params[...][t]``.

    Dropout (train mode) draws independent masks per task (``randomness="different"``).
    """
    return vmap(lambda p, xt: functional_call(model, p, (xt,)), randomness="different")(params, x)


def task_loss(loss_fn: LossFn, logits: Tensor, y: Tensor, *, batched: bool = False) -> Tensor:
    """``loss_fn(logits, y)``; ``batched``: one loss per task, ``[T]``, for ``[T, B, N]`` logits and targets."""
    return vmap(loss_fn)(logits, y) if batched else loss_fn(logits, y)


def inner_loop(
    model: nn.Module,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    steps: int,
    loss_fn: LossFn,
    create_graph: bool,
    batched: bool = False,
) -> tuple[Params, list[Tensor]]:
    """Adapt ``params`` with ``steps`` SGD steps on ``(x, y)``.

    Args:
        create_graph: keep the graph of the gradients (second-order MAML); False for first order / evaluation.
        batched: T tasks at once (the ``vmap`` engine's inner loop, and one evaluation can call to adapt several
            episodes together): ``params`` are ``[T, ...]`` (e.g. :func:`.batched.broadcast_params` of θ), ``x``
            ``[T, S, C, H, W]``, ``y`` ``[T, S, N]``; the gradient of the summed task losses gives each task
            exactly its own (task t depends on slice t only). Score afterwards with :func:`batched_forward`.

    Returns:
        The adapted parameters and the (detached) support loss measured before each step (``[T]`` if batched).
    """
    losses: list[Tensor] = []
    run = batched_forward if batched else forward
    for _ in range(steps):
        loss = task_loss(loss_fn, run(model, params, x), y, batched=batched)
        total = loss.sum() if batched else loss
        grads = torch.autograd.grad(total, list(params.values()), create_graph=create_graph, allow_unused=True)
        params = sgd_update(params, grads, lr)
        losses.append(loss.detach())
    return params, losses


def query_after_adaptation(
    model: nn.Module, params: Params, task: Sequence[Tensor], cfg: MamlConfig, loss_fn: LossFn, *, batched: bool = False
) -> tuple[Tensor, list[Tensor], Tensor]:
    """Adapt on a task's support set, then score its query set: the query loss (with its graph to ``params``),
    the detached support losses before each inner step, and the detached query logits. ``batched``: see
    :func:`inner_loop` (task tensors stacked, ``[T]`` query losses)."""
    sx, sy, qx, qy = task
    params, losses = inner_loop(
        model,
        params,
        sx,
        sy,
        lr=cfg.inner_lr,
        steps=cfg.adapt_steps,
        loss_fn=loss_fn,
        create_graph=not cfg.first_order,
        batched=batched,
    )
    logits = (batched_forward if batched else forward)(model, params, qx)
    return task_loss(loss_fn, logits, qy, batched=batched), losses, logits.detach()
