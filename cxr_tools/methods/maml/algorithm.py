"""MAML meta-training and adaptation on any ``nn.Module`` mapping ``[B, 1, H, W]`` images to ``[B, N]`` logits.

Implements Model-Agnostic Meta-Learning (Finn, Abbeel & Levine 2017) and its first-order approximation (Finn et
al. 2017; Nichol, Achiam & Schulman 2018). A *task* is one episode ``(support_x, support_y, query_x, query_y)``
with multi-hot targets over the episode's N classes. Per task the meta-parameters θ are adapted with
``adapt_steps`` SGD steps on the support loss; the meta-loss is the mean over tasks of the query loss at the
adapted parameters, and its gradient w.r.t. θ (the meta-gradient) is what the outer optimizer — any plain
``torch.optim`` optimizer over ``model.parameters()`` — follows::

    cfg = MamlConfig(inner_lr=0.01, adapt_steps=5, first_order=False, engine="auto")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    info = meta_step(model, opt, tasks, cfg)            # tasks: list of (sx, sy, qx, qy)
    adapted = adapt(model, sx, sy, cfg)                 # evaluation: adapt on a support set ...
    with torch.no_grad():
        probs = torch.sigmoid(adapted(qx))              # ... then score queries, one image at a time or batched

Every function runs with BatchNorm layers in eval mode (see :mod:`cxr_tools.methods.maml.norm` for why), so a
query's score never depends on its batch-mates and BatchNorm running statistics never change.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cxr_tools.errors import ConfigError, DependencyError
from cxr_tools.methods.maml.batched import vmap_group_losses, vmap_task, vmap_tasks
from cxr_tools.methods.maml.config import ENGINES, MamlConfig
from cxr_tools.methods.maml.engines import (
    TASK_FUNCTIONS,
    TaskFunction,
    TaskOutput,
    import_higher,
    import_learn2learn,
)
from cxr_tools.methods.maml.functional import Params, forward, inner_loop, trainable_params
from cxr_tools.methods.maml.losses import LossFn, multilabel_bce
from cxr_tools.methods.maml.norm import frozen_batchnorm

log = logging.getLogger(__name__)


class Task(NamedTuple):
    """One episode; a plain 4-tuple in this order works just as well.

    Attributes:
        support_x: ``[S, 1, H, W]`` support images.
        support_y: ``[S, N]`` multi-hot targets over the episode's N classes (NaN = unknown, masked).
        query_x: ``[Q, 1, H, W]`` query images.
        query_y: ``[Q, N]`` query targets.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


@dataclass(frozen=True)
class TaskInfo:
    """What happened in one task of a meta-batch.

    Attributes:
        query_loss: loss on the query set at the adapted parameters.
        support_losses: support loss before each inner step (``adapt_steps`` values).
        query_logits: ``[Q, N]`` detached query logits at the adapted parameters (for training metrics).
    """

    query_loss: float
    support_losses: tuple[float, ...]
    query_logits: Tensor


@dataclass(frozen=True)
class MetaInfo:
    """A meta-batch's summary: ``loss`` is the mean query loss over ``tasks``; ``engine`` the one that ran."""

    loss: float
    engine: str
    tasks: tuple[TaskInfo, ...]


def resolve_engine(engine: str, *, quiet: bool = False) -> str:
    """Turn ``auto`` into a concrete engine and check that the chosen one can be imported.

    ``auto`` is learn2learn when it imports, else ``func`` (logged at INFO unless ``quiet``). Call it once before
    training and store the result in the config, so every step uses the same engine.

    Raises:
        ConfigError: unknown engine name.
        DependencyError: ``learn2learn`` or ``higher`` was asked for and is missing; the message says how to
            install it.
    """
    if engine not in ENGINES:
        raise ConfigError(f"Unknown MAML engine {engine!r}.", f"Choose one of: {', '.join(ENGINES)}.")
    if engine == "auto":
        try:
            import_learn2learn()
            chosen, why = "learn2learn", "learn2learn is installed"
        except DependencyError as exc:
            chosen, why = "func", f"learn2learn unavailable: {exc.message}"
        if not quiet:
            log.info("MAML engine auto -> %s (%s)", chosen, why)
        return chosen
    if engine == "learn2learn":
        import_learn2learn()
    elif engine == "higher":
        import_higher()
    return engine


def meta_loss(
    model: nn.Module, tasks: Sequence[Sequence[Tensor]], cfg: MamlConfig, loss_fn: LossFn = multilabel_bce
) -> tuple[Tensor, MetaInfo]:
    """The MAML meta-loss over a meta-batch: mean over tasks of the post-adaptation query loss.

    ``loss.backward()`` fills ``.grad`` of every meta-parameter with the meta-gradient. All tasks' graphs are
    held until then; :func:`meta_backward` gives the same gradient holding one task's graph at a time.

    Args:
        model: any module mapping ``[B, 1, H, W]`` to ``[B, N]`` logits; its ``requires_grad`` parameters are the
            meta-parameters (frozen ones are neither adapted nor meta-learned).
        tasks: ``(support_x, support_y, query_x, query_y)`` tuples (or :class:`Task`), on the model's device.
        cfg: inner-loop settings and engine.
        loss_fn: ``loss_fn(logits, targets) -> scalar`` for both support and query (default: masked BCE).
    """
    engine, run = _engine(cfg, tasks)
    with frozen_batchnorm(model):
        if engine == "vmap":
            outs = vmap_tasks(model, tasks, cfg, loss_fn)
        else:
            outs = [run(model, task, cfg, loss_fn) for task in tasks]
    loss = torch.stack([o.query_loss for o in outs]).mean()
    return loss, _summarise(engine, outs)


def meta_backward(
    model: nn.Module,
    tasks: Sequence[Sequence[Tensor]],
    cfg: MamlConfig,
    loss_fn: LossFn = multilabel_bce,
    *,
    scale: float | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> MetaInfo:
    """Accumulate ``scale`` × the sum of the tasks' meta-gradients into ``.grad``, one task graph at a time.

    With the default ``scale = 1 / len(tasks)`` this adds exactly the gradient of :func:`meta_loss`, with the
    memory of a single task. Under data parallelism, give each rank its share of the meta-batch with
    ``scale = 1 / total_tasks`` and all-reduce (sum) the gradients afterwards. Existing ``.grad`` values are added
    to, not replaced (call ``optimizer.zero_grad()`` first). ``backward(loss)`` backpropagates each task's
    weighted query loss (default ``loss.backward()``); under fp16 AMP pass one that goes through the GradScaler
    (``scaler.scale(loss).backward()``, what the training loop hands its step), so that the meta-gradient,
    tiny values included, is computed scaled and ``scaler.step`` unscales exactly that.
    """
    engine, run = _engine(cfg, tasks)
    weight = 1.0 / len(tasks) if scale is None else scale
    if engine == "vmap":
        return _vmap_backward(model, tasks, cfg, loss_fn, weight, backward or Tensor.backward)
    outs = []
    with frozen_batchnorm(model):
        for task in tasks:
            out = run(model, task, cfg, loss_fn)
            if out.query_loss.requires_grad:
                (backward or Tensor.backward)(out.query_loss * weight)
            outs.append(TaskOutput(out.query_loss.detach(), out.support_losses, out.query_logits))
    return _summarise(engine, outs)


def meta_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tasks: Sequence[Sequence[Tensor]],
    cfg: MamlConfig,
    loss_fn: LossFn = multilabel_bce,
) -> MetaInfo:
    """One outer update: zero the gradients, :func:`meta_backward` over ``tasks``, ``optimizer.step()``."""
    optimizer.zero_grad(set_to_none=True)
    info = meta_backward(model, tasks, cfg, loss_fn)
    optimizer.step()
    return info


class AdaptedModel:
    """``model`` with task-adapted parameters, returned by :func:`adapt`; call it like the model.

    Attributes:
        params: the adapted (detached) values of the model's trainable parameters, by name.
        support_losses: support loss before each inner step and after the last one (``adapt_steps + 1`` values).
    """

    def __init__(self, model: nn.Module, params: Params, support_losses: tuple[float, ...]) -> None:
        self.model = model
        self.params = params
        self.support_losses = support_losses

    def __call__(self, x: Tensor) -> Tensor:
        """Logits ``[B, N]`` for images ``[B, 1, H, W]``; each row depends on its own image only."""
        with frozen_batchnorm(self.model):
            return forward(self.model, self.params, x)

    def to_module(self) -> nn.Module:
        """A standalone copy of the model carrying the adapted parameters (e.g. to save or to serve)."""
        clone = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in clone.named_parameters():
                if name in self.params:
                    p.copy_(self.params[name])
        return clone


def adapt(
    model: nn.Module, support_x: Tensor, support_y: Tensor, cfg: MamlConfig, loss_fn: LossFn = multilabel_bce
) -> AdaptedModel:
    """Adapt ``model`` to one support set (evaluation / prediction); the model itself is left unchanged.

    Runs ``cfg.adapt_steps`` SGD steps of size ``cfg.inner_lr`` from the model's current parameters with the
    functional core — the same update every engine performs — without keeping a graph to the model. Works inside
    ``torch.no_grad()`` and in eval mode (call ``model.eval()`` first at evaluation to switch dropout off).
    """
    start = {name: p.detach().requires_grad_() for name, p in trainable_params(model).items()}
    with torch.enable_grad(), frozen_batchnorm(model):
        params, losses = inner_loop(
            model,
            start,
            support_x,
            support_y,
            lr=cfg.inner_lr,
            steps=cfg.adapt_steps,
            loss_fn=loss_fn,
            create_graph=False,
        )
        params = {name: p.detach() for name, p in params.items()}
        with torch.no_grad():
            losses.append(loss_fn(forward(model, params, support_x), support_y))
    return AdaptedModel(model, params, tuple(torch.stack(losses).tolist()))


def params_without_meta_grad(model: nn.Module) -> list[str]:
    """Names of meta-parameters whose ``.grad`` is missing or entirely zero after a backward pass.

    An empty list is what a working meta-step gives; a non-empty one is the symptom of a detached inner loop
    (the seed project's ``copy_initial_weights=True``) or of a parameter the model never uses.
    """
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(torch.any(p.grad != 0)))
    ]


def _engine(cfg: MamlConfig, tasks: Sequence[Sequence[Tensor]]) -> tuple[str, TaskFunction]:
    if len(tasks) == 0:
        raise ConfigError("A meta-batch needs at least one task.", "Use --meta-batch 1 or more.")
    engine = resolve_engine(cfg.engine, quiet=True)
    return engine, {**TASK_FUNCTIONS, "vmap": vmap_task}[engine]


def _vmap_backward(
    model: nn.Module,
    tasks: Sequence[Sequence[Tensor]],
    cfg: MamlConfig,
    loss_fn: LossFn,
    weight: float,
    backward: Callable[[Tensor], None],
) -> MetaInfo:
    # One backward pass per group of equal-shaped tasks (usually the whole meta-batch): the group's graph is
    # shared by its tasks, so it is backpropagated once, as the weighted sum of their query losses.
    outs: dict[int, TaskOutput] = {}
    with frozen_batchnorm(model):
        for members, losses, group in vmap_group_losses(model, tasks, cfg, loss_fn):
            if losses.requires_grad:
                backward(losses.sum() * weight)
            for i, out in zip(members, group, strict=True):
                outs[i] = TaskOutput(out.query_loss.detach(), out.support_losses, out.query_logits)
    return _summarise("vmap", [outs[i] for i in range(len(tasks))])


def _summarise(engine: str, outs: Sequence[TaskOutput]) -> MetaInfo:
    # One device sync for the whole meta-batch instead of one per loss value.
    query = torch.stack([o.query_loss.detach() for o in outs]).tolist()
    support = [torch.stack(o.support_losses).tolist() if o.support_losses else [] for o in outs]
    tasks = tuple(TaskInfo(q, tuple(s), o.query_logits) for q, s, o in zip(query, support, outs, strict=True))
    return MetaInfo(loss=sum(query) / len(query), engine=engine, tasks=tasks)
