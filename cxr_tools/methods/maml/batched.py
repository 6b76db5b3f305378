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

from cxr_tools.methods.maml.config import MamlConfig
from cxr_tools.methods.maml.engines import TaskOutput, TaskTensors
from cxr_tools.methods.maml.functional import Params, query_after_adaptation, trainable_params
from cxr_tools.methods.maml.losses import LossFn

log = logging.getLogger(__name__)


def broadcast_params(params: Params, tasks: int) -> Params:
    """``params`` with a leading task axis of length ``tasks``: a differentiable view, no copy."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


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
    stacked = [torch.stack(parts) for parts in zip(*tasks, strict=True)]
    start = broadcast_params(trainable_params(model), len(tasks))
    query, losses, logits = query_after_adaptation(model, start, stacked, cfg, loss_fn, batched=True)
    per_step = torch.stack(losses, 1) if losses else None  # [T, steps]
    return [
        TaskOutput(query[t], list(per_step[t].unbind()) if per_step is not None else [], logits[t])
        for t in range(len(tasks))
    ]
