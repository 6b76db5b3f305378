"""The one conversion from cache images to model input: uint8 pixels -> float [n, 1, H, W] in the model's range.

Every path that feeds a model (training batches, episodes, prediction, similarity, evaluation) goes through
:func:`to_model_input`, so a model sees the same numbers in training and at test time. The range is the model's
input contract (``model.json`` ``input.normalisation``, see :data:`~cxr_tools.models.registry.NORMALISATIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor


def normalisation_of(meta_or_normalisation: Mapping[str, Any] | str | None) -> str:
    """The normalisation name of a model card (``meta['input']['normalisation']``) or a name itself."""
    if meta_or_normalisation is None:
        return "unit"
    if isinstance(meta_or_normalisation, str):
        return meta_or_normalisation
    return str((meta_or_normalisation.get("input") or {}).get("normalisation") or "unit")


def to_model_input(images: Any, meta_or_normalisation: Mapping[str, Any] | str | None, device: Any = "cpu") -> Tensor:
    """Cache images (uint8 ``[n, H, W]`` array or tensor) as float ``[n, 1, H, W]`` in the model's input range."""
    import torch

    from cxr_tools.models.registry import normalise

    x = torch.as_tensor(np.asarray(images)).to(device=device, dtype=torch.float32).div_(255.0)
    return normalise(x.unsqueeze(1), normalisation_of(meta_or_normalisation))
