"""models layer (see docs/design.md): the zoo, backbones, pretrained weights, model folders and checkpoints.

Public API (imported lazily so that ``import cxr_tools.models`` does not import torch)::

    create_model, list_models, model_card, is_model, ModelCard, WeightSource, normalise   (registry)
    freeze_batchnorm, set_bn_eval, has_batchnorm                                       (backbones)
    model_meta, save_model_dir, load_model_dir, read_model_meta, check_compatible, load_state_strict  (checkpoints)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "registry": (
        "create_model",
        "list_models",
        "model_card",
        "is_model",
        "ModelCard",
        "WeightSource",
        "normalise",
        "NORMALISATIONS",
    ),
    "backbones": ("freeze_batchnorm", "set_bn_eval", "has_batchnorm"),
    "checkpoints": (
        "model_meta",
        "save_model_dir",
        "load_model_dir",
        "read_model_meta",
        "check_compatible",
        "load_state_strict",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cxr_tools.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cxr_tools.models.{module}"), name)
