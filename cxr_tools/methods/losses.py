"""The supervised multi-label loss: BCE-with-logits over the entries a label mask keeps.

Findings are not mutually exclusive, so every class is an independent sigmoid (never a softmax). The mask is
the uncertainty policy's (``ignore`` masks uncertain labels out of the loss). Kept apart from the episode loss
:func:`cxr_tools.methods.maml.losses.multilabel_bce`, which marks unknown entries with NaN and has no
``pos_weight``: the MAML inner loop must not pay for a mask tensor or a class weighting per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def masked_bce(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None, reduction: str = "mean"
) -> torch.Tensor:
    """BCE-with-logits over the unmasked entries, in float32.

    Args:
        logits, y, mask: ``[B, L]`` outputs, targets in {0, 1} and the entries to keep.
        pos_weight: ``[L]`` weight of the positive term (``--balance weights``), or None.
        reduction: ``mean`` (over the kept entries; 0 when none is kept) or ``sum`` (to accumulate over
            batches and divide once, as validation does).
    """
    import torch.nn.functional as F

    m = mask.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=pos_weight, reduction="none")
    total = (losses * m.float()).sum()
    if reduction == "sum":
        return total
    return total / m.float().sum().clamp_min(1.0)
