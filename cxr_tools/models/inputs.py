"""The one conversion from cache images to model input: uint8 pixels -> float [n, 1, H, W] in the model's range.

Episodes, prediction, similarity, evaluation and the app go through :func:`to_model_input`. Training batches do
not (they are built as float tensors and augmented by :mod:`cxr_tools.data.sampling.batches`, which data/ may
not import from here), but both end in :func:`~cxr_tools.models.registry.normalise`, so a model sees the same
range in training and at test time. The range is the model's input contract (``model.json``
``input.normalisation``, see :data:`~cxr_tools.models.registry.NORMALISATIONS`).
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
