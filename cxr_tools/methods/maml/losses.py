"""The episode loss: binary cross-entropy with logits over multi-hot targets of the episode's N classes.

Findings are not mutually exclusive (an image can show Effusion and Atelectasis), so each of the N outputs is an
independent sigmoid, never a softmax across findings (one of the seed projects' mistakes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cxr_tools.errors import ModelError

#: ``loss_fn(logits [B, N], targets [B, N]) -> scalar``; any differentiable function of this shape can replace
#: :func:`multilabel_bce` in every MAML function.
LossFn = Callable[[Tensor, Tensor], Tensor]


def multilabel_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits over the known entries of ``targets``; NaN entries are masked out.

    A NaN target means "unknown" (e.g. an uncertain CheXpert label under the U-Ignore policy): it contributes
    neither loss nor gradient, and the mean is taken over the known entries only.

    Args:
        logits: ``[B, N]`` model outputs, one column per episode class.
        targets: ``[B, N]`` multi-hot targets in {0, 1}, NaN where unknown.

    Raises:
        ModelError: the model's number of outputs differs from the episode's number of classes.
    """
    if logits.shape != targets.shape:
        raise ModelError(
            f"The model returns logits of shape {tuple(logits.shape)} but the episode's targets have shape "
            f"{tuple(targets.shape)}.",
            "Create the model with one output per episode class (num_classes = --ways).",
        )
    targets = targets.to(logits.dtype)
    # One code path with or without NaNs: testing for them would cost a device sync per inner step.
    known = ~torch.isnan(targets)
    weight = known.to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(logits, torch.where(known, targets, 0.0), reduction="none")
    return (per_entry * weight).sum() / weight.sum().clamp(min=1.0)
