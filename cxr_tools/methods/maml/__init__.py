"""MAML and first-order MAML for few-shot multi-label classification.

Model-Agnostic Meta-Learning: Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks" (ICML). First-order MAML: Finn et al. 2017 §5.2; Nichol, Achiam & Schulman 2018, "On First-Order
Meta-Learning Algorithms".

Modules:
    config      :class:`MamlConfig` (torch-free) and the engine names.
    losses      :func:`multilabel_bce`, masked BCE-with-logits over the episode's N classes.
    functional  the functional core: out-of-place SGD on a name → tensor parameter mapping.
    engines     the same per-task computation through learn2learn, higher and torch.func.
    batched     the ``vmap`` engine: a meta-batch's tasks as one batched computation (``inner_loop(...,
                batched=True)`` and ``batched_forward`` adapt and score several episodes at once, for evaluation too).
    norm        BatchNorm handling: eval mode during adaptation and scoring (why: see that module).
    algorithm   the public API below.

Public API: :func:`meta_loss`, :func:`meta_backward`, :func:`meta_step` (meta-training), :func:`adapt`
(evaluation), :func:`resolve_engine`, :func:`params_without_meta_grad`, :func:`frozen_batchnorm`. The data
pipeline and the model zoo are not imported: tasks are tensors, the model is any ``nn.Module``.

Names are loaded lazily (PEP 562) so that ``from cxr_tools.methods.maml.config import MamlConfig`` — e.g. in a
CLI module — does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AdaptedModel": "algorithm",
    "MetaInfo": "algorithm",
    "Task": "algorithm",
    "TaskInfo": "algorithm",
    "adapt": "algorithm",
    "meta_backward": "algorithm",
    "meta_loss": "algorithm",
    "meta_step": "algorithm",
    "params_without_meta_grad": "algorithm",
    "resolve_engine": "algorithm",
    "batched_forward": "functional",
    "broadcast_params": "batched",
    "inner_loop": "functional",
    "ENGINES": "config",
    "MamlConfig": "config",
    "LEARN2LEARN_INSTALL": "engines",
    "import_learn2learn": "engines",
    "LossFn": "losses",
    "multilabel_bce": "losses",
    "check_batch_independent": "norm",
    "frozen_batchnorm": "norm",
}

__all__ = [
    "ENGINES",
    "LEARN2LEARN_INSTALL",
    "AdaptedModel",
    "LossFn",
    "MamlConfig",
    "MetaInfo",
    "Task",
    "TaskInfo",
    "adapt",
    "batched_forward",
    "broadcast_params",
    "check_batch_independent",
    "frozen_batchnorm",
    "import_learn2learn",
    "inner_loop",
    "meta_backward",
    "meta_loss",
    "meta_step",
    "multilabel_bce",
    "params_without_meta_grad",
    "resolve_engine",
]

if TYPE_CHECKING:
    from cxr_tools.methods.maml.algorithm import (
        AdaptedModel,
        MetaInfo,
        Task,
        TaskInfo,
        adapt,
        meta_backward,
        meta_loss,
        meta_step,
        params_without_meta_grad,
        resolve_engine,
    )
    from cxr_tools.methods.maml.batched import broadcast_params
    from cxr_tools.methods.maml.config import ENGINES, MamlConfig
    from cxr_tools.methods.maml.engines import LEARN2LEARN_INSTALL, import_learn2learn
    from cxr_tools.methods.maml.functional import batched_forward, inner_loop
    from cxr_tools.methods.maml.losses import LossFn, multilabel_bce
    from cxr_tools.methods.maml.norm import check_batch_independent, frozen_batchnorm


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
