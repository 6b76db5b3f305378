"""Three interchangeable ways to compute one task's post-adaptation query loss, differentiable w.r.t. θ.

All three implement MAML (Finn et al. 2017) and first-order MAML (Finn et al. 2017; Nichol et al. 2018) and give
the same meta-gradient to round-off (``tests/unit/test_maml_engines.py``):

* ``learn2learn`` — ``l2l.algorithms.MAML(model).clone()`` then ``adapt(loss)`` per inner step, the library users
  asked for. Imported lazily: it is not a declared dependency (see :func:`import_learn2learn`).
* ``higher`` — ``higher.innerloop_ctx(model, SGD, copy_initial_weights=False, track_higher_grads=not first_order)``.
  ``copy_initial_weights=False`` is essential: with ``True`` (a seed project's bug) the fast weights start from a
  detached copy and the meta-gradient never reaches the model. With ``track_higher_grads=False`` higher detaches
  the fast weights, so for first order we take ∇L_query at the adapted weights and attach it to θ ourselves,
  when the caller backpropagates (so a GradScaler's scale reaches that gradient too).
* ``func`` — :mod:`cxr_tools.methods.maml.functional` (``torch.func.functional_call`` + ``torch.autograd.grad``),
  no extra dependency; the fallback of ``auto``.

A fourth engine, ``vmap`` (:mod:`cxr_tools.methods.maml.batched`), computes the same per-task quantities for a
whole meta-batch at once.

Each engine expects the caller to have put BatchNorm layers in eval mode (:func:`.norm.frozen_batchnorm`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from cxr_tools.errors import DependencyError
from cxr_tools.methods.maml.config import MamlConfig
from cxr_tools.methods.maml.functional import query_after_adaptation, trainable_params
from cxr_tools.methods.maml.losses import LossFn

log = logging.getLogger(__name__)

LEARN2LEARN_INSTALL = (
    "pip install --no-deps learn2learn==0.2.0 --config-settings=--build-option=build_ext "
    "&& pip install gym scipy tqdm requests"
)

TaskTensors = Sequence[Tensor]


@dataclass(frozen=True)
class TaskOutput:
    """One task's result: ``query_loss`` carries the graph to θ; the rest is detached."""

    query_loss: Tensor
    support_losses: list[Tensor]
    query_logits: Tensor


def import_learn2learn() -> ModuleType:
    """Import learn2learn, or raise :class:`DependencyError` saying exactly how to install it.

    gym's "unmaintained" notice, printed on import, is routed to the debug log instead of the user's terminal.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import learn2learn
    except ImportError as exc:
        raise DependencyError(
            f"The MAML engine 'learn2learn' needs the learn2learn package, which is not installed ({exc}).",
            f"Install it with: {LEARN2LEARN_INSTALL} (or run `make demo`, which installs it); "
            "or choose --engine func or --engine higher, which compute the same meta-gradient.",
        ) from exc
    except Exception as exc:  # a broken install (e.g. a gym incompatible with the installed numpy)
        raise DependencyError(
            f"learn2learn is installed but failed to import: {type(exc).__name__}: {exc}.",
            f"Reinstall it with: {LEARN2LEARN_INSTALL}; or choose --engine func or --engine higher.",
        ) from exc
    if captured.getvalue():
        log.debug("import learn2learn printed: %s", captured.getvalue().strip())
    return learn2learn


def import_higher() -> ModuleType:
    """Import higher, or raise :class:`DependencyError` saying how to install it."""
    try:
        import higher
    except ImportError as exc:
        raise DependencyError(
            f"The MAML engine 'higher' needs the higher package, which is not installed ({exc}).",
            "Install it with: pip install higher==0.2.1; or choose --engine func.",
        ) from exc
    return higher


def learn2learn_task(model: nn.Module, task: TaskTensors, cfg: MamlConfig, loss_fn: LossFn) -> TaskOutput:
    """One task through learn2learn's ``MAML.clone()`` / ``adapt()``."""
    l2l = import_learn2learn()
    sx, sy, qx, qy = task
    maml = l2l.algorithms.MAML(
        model, lr=cfg.inner_lr, first_order=cfg.first_order, allow_unused=True, allow_nograd=True
    )
    learner = maml.clone()
    losses = []
    for _ in range(cfg.adapt_steps):
        loss = loss_fn(learner(sx), sy)
        learner.adapt(loss)
        losses.append(loss.detach())
    logits = learner(qx)
    return TaskOutput(loss_fn(logits, qy), losses, logits.detach())


def higher_task(
    model: nn.Module,
    task: TaskTensors,
    cfg: MamlConfig,
    loss_fn: LossFn,
    *,
    _copy_initial_weights: bool = False,
) -> TaskOutput:
    """One task through ``higher.innerloop_ctx`` with a differentiable SGD.

    ``_copy_initial_weights`` exists only so a regression test can show that ``True`` (the seed bug) leaves the
    model without a second-order meta-gradient; never set it.
    """
    higher = import_higher()
    sx, sy, qx, qy = task
    trainable = [p.requires_grad for p in model.parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.inner_lr)
    with higher.innerloop_ctx(
        model, opt, copy_initial_weights=_copy_initial_weights, track_higher_grads=not cfg.first_order
    ) as (fmodel, diffopt):
        losses = []
        for _ in range(cfg.adapt_steps):
            loss = loss_fn(fmodel(sx), sy)
            diffopt.step(loss)
            losses.append(loss.detach())
        logits = fmodel(qx)
        query_loss = loss_fn(logits, qy)
        if cfg.first_order:
            fast = [fp for fp, t in zip(fmodel.parameters(), trainable, strict=True) if t]
            meta = [p for p in model.parameters() if p.requires_grad]
            query_loss = _FirstOrder.apply(query_loss.detach(), (query_loss, fast), *meta)
    return TaskOutput(query_loss, losses, logits.detach())


def func_task(model: nn.Module, task: TaskTensors, cfg: MamlConfig, loss_fn: LossFn) -> TaskOutput:
    """One task through the functional core (``torch.func.functional_call`` + ``torch.autograd.grad``)."""
    return TaskOutput(*query_after_adaptation(model, trainable_params(model), task, cfg, loss_fn))


class _FirstOrder(torch.autograd.Function):
    """The query loss's value, whose backward deposits ∇L_query at the fast weights on θ (first-order MAML).

    The gradient is taken when the caller backpropagates, with the caller's upstream gradient as
    ``grad_outputs``: under fp16 AMP that is the GradScaler's scale (times the task weight), so the fp16
    gradient is computed scaled, as every other backward pass is, and tiny values do not underflow.
    """

    @staticmethod
    def forward(ctx: Any, value: Tensor, graph: tuple[Tensor, list[Tensor]], *meta: Tensor) -> Tensor:
        ctx.graph = graph  # the query loss with its graph to the fast weights, and those weights (same shapes)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor | None, ...]:
        loss, fast = ctx.graph
        ctx.graph = None
        return (None, None, *torch.autograd.grad(loss, fast, grad_outputs=upstream, allow_unused=True))


TaskFunction = Callable[[nn.Module, TaskTensors, MamlConfig, LossFn], TaskOutput]

TASK_FUNCTIONS: dict[str, TaskFunction] = {
    "learn2learn": learn2learn_task,
    "higher": higher_task,
    "func": func_task,
}
