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
from torch.func import functional_call

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
) -> tuple[Params, list[Tensor]]:
    """Adapt ``params`` with ``steps`` SGD steps on ``(x, y)``.

    Args:
        create_graph: keep the graph of the gradients (second-order MAML); False for first order / evaluation.

    Returns:
        The adapted parameters and the (detached) support loss measured before each step.
    """
    losses: list[Tensor] = []
    for _ in range(steps):
        loss = loss_fn(forward(model, params, x), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        params = sgd_update(params, grads, lr)
        losses.append(loss.detach())
    return params, losses
