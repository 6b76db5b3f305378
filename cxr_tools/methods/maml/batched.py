"""The ``vmap`` engine: a meta-batch's tasks adapted as one batched computation.

The tasks of a meta-batch are independent, so their inner loops can run side by side: every parameter gets a
leading task axis (``θ`` broadcast to ``[T, ...]``), the model runs once per inner step on all T support sets
through :func:`torch.func.vmap` over :func:`torch.func.functional_call`, and one ``torch.autograd.grad`` of the
*sum* of the T support losses gives each task exactly its own gradient (task t's loss depends on slice t
only). The update, ``θ'_t − α·g_t``, is the functional core's (:mod:`.functional`), so second order keeps the
graph (``create_graph=True``) and first order takes it detached, as learn2learn does; the meta-gradient reaches
θ through the broadcast and equals the task-by-task engines' (``tests/unit/test_maml_gradients.py``).

Tasks of unequal shapes (multi-label episodes whose support or query sets differ in size) cannot share a
``vmap``: they are grouped by shape, each group runs batched, and a group of one is a one-task batch.

BatchNorm is handled as by every engine: the caller puts BatchNorm layers in eval mode
(:func:`.norm.frozen_batchnorm`), so under ``vmap`` they normalise with the running statistics, never with a
batch. Dropout (train mode) draws independent masks per task (``randomness="different"``), distributed as in the
task-by-task engines but not the same draws.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from cxr_tools.methods.maml.config import MamlConfig
from cxr_tools.methods.maml.engines import TaskOutput, TaskTensors
from cxr_tools.methods.maml.functional import Params, sgd_update, trainable_params
from cxr_tools.methods.maml.losses import LossFn

log = logging.getLogger(__name__)


def broadcast_params(params: Params, tasks: int) -> Params:
    """``params`` with a leading task axis of length ``tasks``: a differentiable view, no copy."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def batched_forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Logits ``[T, B, N]`` of ``model`` on images ``x [T, B, ...]``, task t with parameters ``params[...][t]``."""

    def one(p: Params, xt: Tensor) -> Tensor:
        return functional_call(model, p, (xt,))

    return vmap(one, randomness="different")(params, x)


def batched_loss(loss_fn: LossFn, logits: Tensor, y: Tensor) -> Tensor:
    """``loss_fn`` per task: ``[T]`` losses of ``logits [T, B, N]`` against ``y [T, B, N]``."""
    return vmap(loss_fn)(logits, y)


def batched_inner_loop(
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
    """Adapt T tasks at once: ``steps`` SGD steps of size ``lr`` on each task's support set.

    The batched counterpart of :func:`.functional.inner_loop`, usable for meta-training and for evaluation
    (adapting several episodes at once, with ``create_graph=False`` under ``torch.enable_grad()``).

    Args:
        model: the module; its BatchNorm layers should be in eval mode (:func:`.norm.frozen_batchnorm`).
        params: per-task parameters ``name -> [T, ...]`` (e.g. :func:`broadcast_params` of the meta-parameters);
            they must require grad, or be a function of tensors that do.
        x: support images ``[T, S, C, H, W]``; ``y``: targets ``[T, S, N]`` (NaN = unknown).
        create_graph: keep the graph of the gradients (second-order MAML); False for first order / evaluation.

    Returns:
        The adapted parameters ``name -> [T, ...]`` and, per step, the detached support losses ``[T]`` measured
        before that step.
    """
    losses: list[Tensor] = []
    for _ in range(steps):
        loss = batched_loss(loss_fn, batched_forward(model, params, x), y)
        grads = torch.autograd.grad(loss.sum(), list(params.values()), create_graph=create_graph, allow_unused=True)
        params = sgd_update(params, grads, lr)
        losses.append(loss.detach())
    return params, losses


def vmap_tasks(model: nn.Module, tasks: Sequence[TaskTensors], cfg: MamlConfig, loss_fn: LossFn) -> list[TaskOutput]:
    """Every task's :class:`TaskOutput`, in the order given, computing each group of equal shapes batched."""
    groups = shape_groups(tasks)
    if len(groups) > 1:
        log.debug("vmap engine: %d tasks in %d groups of equal shapes", len(tasks), len(groups))
    outs: dict[int, TaskOutput] = {}
    for members in groups:
        group_outs = _run_group(model, [tasks[i] for i in members], cfg, loss_fn)
        outs.update(zip(members, group_outs, strict=True))
    return [outs[i] for i in range(len(tasks))]


def vmap_task(model: nn.Module, task: TaskTensors, cfg: MamlConfig, loss_fn: LossFn) -> TaskOutput:
    """One task as a batch of one (the :data:`~.engines.TaskFunction` form of this engine)."""
    return vmap_tasks(model, [task], cfg, loss_fn)[0]


def vmap_group_losses(
    model: nn.Module, tasks: Sequence[TaskTensors], cfg: MamlConfig, loss_fn: LossFn
) -> list[tuple[list[int], Tensor, list[TaskOutput]]]:
    """Per group of equal shapes: its task indices, the ``[T]`` query losses with their graph, and the outputs.

    What :func:`~.algorithm.meta_backward` needs to backpropagate one group's graph at a time.
    """
    result = []
    for members in shape_groups(tasks):
        outs = _run_group(model, [tasks[i] for i in members], cfg, loss_fn)
        result.append((members, torch.stack([o.query_loss for o in outs]), outs))
    return result


def shape_groups(tasks: Sequence[TaskTensors]) -> list[list[int]]:
    """Indices of ``tasks`` grouped by the shapes, dtypes and devices of their four tensors (first seen first)."""
    groups: dict[tuple, list[int]] = {}
    for i, task in enumerate(tasks):
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in task)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _run_group(model: nn.Module, tasks: Sequence[TaskTensors], cfg: MamlConfig, loss_fn: LossFn) -> list[TaskOutput]:
    sx, sy, qx, qy = (torch.stack(parts) for parts in zip(*tasks, strict=True))
    start = broadcast_params(trainable_params(model), len(tasks))
    params, losses = batched_inner_loop(
        model,
        start,
        sx,
        sy,
        lr=cfg.inner_lr,
        steps=cfg.adapt_steps,
        loss_fn=loss_fn,
        create_graph=not cfg.first_order,
    )
    logits = batched_forward(model, params, qx)
    query = batched_loss(loss_fn, logits, qy)
    per_step = torch.stack(losses, 1) if losses else None  # [T, steps]
    detached = logits.detach()
    return [
        TaskOutput(query[t], list(per_step[t].unbind()) if per_step is not None else [], detached[t])
        for t in range(len(tasks))
    ]
