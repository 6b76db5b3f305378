"""Validation of a Siamese network on a fixed pair set (``cxr train-siamese``): threshold-free pair AUC.

Every image of the pairs is embedded once, in eval mode; the pair AUC of the similarity is monitored for
``best.pt``, and the accuracy is reported at the threshold that maximises it on these pairs (never a fixed 0.5,
docs/science.md), which the model card stores for ``cxr evaluate`` / ``cxr similarity``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import DataError

if TYPE_CHECKING:
    from cxr_tools.data.sampling.batches import CacheImages

log = logging.getLogger(__name__)


def validate_pairs(
    net: Any,
    images: CacheImages,
    pairs: Any,
    batch: int,
    device: Any,
    norm_kind: str,
    margin: float,
    distance: str,
    amp: bool,
) -> dict[str, float]:
    """Embed every image of the validation pairs once (eval mode); pair AUC, loss, accuracy, threshold."""
    import torch

    from cxr_tools.eval.metrics import class_metrics
    from cxr_tools.methods.contrastive import best_threshold, contrastive_loss
    from cxr_tools.models.registry import normalise
    from cxr_tools.models.siamese import similarity
    from cxr_tools.runtime.devices import autocast_context

    rows = pairs.rows()
    net.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            x = torch.from_numpy(images.load(rows[start : start + batch], 0, None)).to(device)
            with autocast_context(device, amp):
                chunks.append(net.embed(normalise(x, norm_kind)).float().cpu())
    emb = torch.cat(chunks)
    where = {int(r): k for k, r in enumerate(rows)}
    za = emb[[where[int(r)] for r in pairs.left]]
    zb = emb[[where[int(r)] for r in pairs.right]]
    target = torch.from_numpy(pairs.target)
    sims = similarity(za, zb, distance).numpy()
    loss = float(contrastive_loss(za, zb, target, margin=margin, distance=distance))
    auc = class_metrics(pairs.target, sims)["auc"]
    threshold, accuracy = best_threshold(pairs.target, sims)
    return {
        "val_loss": loss,
        "val_pair_auc": auc,
        "val_accuracy": accuracy,
        "val_threshold": threshold,
        "val_pairs": float(len(pairs)),
    }


def validation_pairs(
    cache: Any, labels: list[str], rows: Any, rule: str, views: Any, size: int, rng: np.random.Generator
) -> Any:
    """The fixed validation pair set of ``rows``: at most ``size`` pairs (and four per image) drawn with ``rng``.

    None, with a warning, when the val split cannot make pairs (the final weights then become the model).
    """
    from cxr_tools.data.sampling.pairs import PairSampler

    if len(rows) == 0:
        log.warning("The cache has no val split: no validation; the final weights become the model.")
        return None
    try:
        sampler = PairSampler(cache.index, labels, rows=rows, rule=rule, views=views)
    except DataError as exc:
        log.warning("No validation pairs (%s); the final weights become the model.", exc)
        return None
    n = min(size, max(2, sampler.num_images * 4))
    return sampler.sample(n, rng)
