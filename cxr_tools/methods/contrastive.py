"""Contrastive loss for Siamese networks, and the similarity threshold chosen on validation pairs.

Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006, eq. 4:
for a pair with distance ``d`` and label ``y`` (here 1 = similar, 0 = dissimilar; the paper writes
``Y = 0`` for similar)::

    L = y * ½ d²  +  (1 - y) * ½ max(0, m - d)²

Similar pairs are pulled together; dissimilar pairs are pushed apart until they are at least the margin
``m`` away, and then cost nothing. Embeddings are L2-normalised first (the loss normalises them again, a
no-op on unit vectors), so both distances lie in [0, 2] (see :mod:`cxr_tools.models.siamese`) and a margin
in (0, 2] is meaningful: with ``m = 1`` and the cosine distance, dissimilar pairs are pushed to orthogonal.

A similarity score needs a threshold to become a decision. The seeds used a fixed 0.5 on a set of 90%
positive pairs (docs/science.md); :func:`best_threshold` instead picks the threshold that maximises accuracy
on the validation pairs and reports it, next to the threshold-free pair AUC.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from cxr_tools.errors import ConfigError
from cxr_tools.models.siamese import check_distance, pair_distance

log = logging.getLogger(__name__)


def check_margin(margin: float) -> float:
    """The margin if usable: > 0; above 2 (the largest distance on the unit sphere) every negative pays."""
    if not math.isfinite(margin) or margin <= 0:
        raise ConfigError(f"--margin must be a positive number (got {margin}).", "Typical values: 0.5 to 1.0.")
    if margin > 2.0:
        log.warning(
            "--margin %g exceeds 2, the largest distance between unit vectors: every negative pair pays.", margin
        )
    return float(margin)


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 1.0,
    distance: str = "cosine",
    reduction: str = "mean",
) -> torch.Tensor:
    """Hadsell et al. (2006) contrastive loss of embedding pairs (module docstring).

    Args:
        a, b: embeddings [B, D] (L2-normalised here).
        target: [B], 1 for a similar pair, 0 for a dissimilar one.
        margin: distance beyond which dissimilar pairs cost nothing.
        distance: ``cosine`` or ``euclidean``.
        reduction: ``mean``, ``sum`` or ``none``.

    Example:
        >>> a = torch.tensor([[1.0, 0.0]]); b = torch.tensor([[0.0, 1.0]])
        >>> contrastive_loss(a, b, torch.tensor([1.0]), distance="cosine")  # d = 1: ½ · 1²
        tensor(0.5000)
    """
    check_distance(distance)
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    y = target.to(a.dtype).reshape(-1)
    d2 = pair_distance(a, b, distance, squared=True)
    d = pair_distance(a, b, distance)
    losses = 0.5 * y * d2 + 0.5 * (1.0 - y) * (margin - d).clamp_min(0.0).pow(2)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ConfigError(f"Unknown reduction '{reduction}'.", "Use mean, sum or none.")


def best_threshold(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The similarity threshold with the highest accuracy on ``(targets, scores)``, and that accuracy.

    A pair is called similar when ``score >= threshold``. Candidates are the midpoints between consecutive
    distinct scores, the lowest score (everything similar) and just above the highest (nothing similar); ties
    keep the lowest threshold.
    """
    y = np.asarray(targets, dtype=np.float64).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) == 0:
        return math.nan, math.nan
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    uniq, first = np.unique(s_sorted, return_index=True)
    # negatives strictly below each candidate + positives at or above it
    neg_below = np.concatenate([[0], np.cumsum(~y_sorted)])[first]
    pos_at_or_above = y.sum() - np.concatenate([[0], np.cumsum(y_sorted)])[first]
    correct = np.append(neg_below + pos_at_or_above, (~y).sum())  # last: threshold above every score
    thresholds = np.empty(len(uniq) + 1)
    thresholds[0] = uniq[0]
    mids = (uniq[:-1] + uniq[1:]) / 2.0
    thresholds[1:-1] = np.where(mids > uniq[:-1], mids, uniq[1:])  # adjacent floats: the upper value
    thresholds[-1] = np.nextafter(uniq[-1], np.inf)
    k = int(np.argmax(correct))
    return float(thresholds[k]), float(correct[k] / len(s))
