"""Episodes as model-ready tensors (one path for meta-training, meta-validation and ``cxr evaluate``), and the
MAML adapt-then-score of a list of episodes that meta-validation uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxr_tools.data.cache import CacheReader
    from cxr_tools.data.episodes import Episode
    from cxr_tools.methods.maml.config import MamlConfig


def episode_tensors(
    cache: CacheReader, episode: Episode, normalisation: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(support_x, support_y, query_x, query_y)``: images ``[n, 1, H, W]`` in the model's input range.

    Support and query images are read from the cache in one call and converted by
    :func:`~cxr_tools.models.inputs.to_model_input`.
    """
    import torch

    from cxr_tools.models.inputs import to_model_input

    rows = np.concatenate([episode.support_rows, episode.query_rows])
    x = to_model_input(cache.read(rows), normalisation, device)
    n = len(episode.support_rows)
    sy = torch.from_numpy(episode.support_targets).to(device)
    qy = torch.from_numpy(episode.query_targets).to(device)
    return x[:n], sy, x[n:], qy


def evaluate_episodes(
    model: nn.Module,
    cache: CacheReader,
    episodes: Sequence[Episode],
    maml: MamlConfig,
    device: torch.device,
) -> list[dict[str, float]]:
    """Adapt ``model`` to each episode's support set (MAML inner loop) and score its queries.

    Returns one record per episode: ``auc`` and ``ap`` (means over the episode's classes), the query loss before
    and after adaptation and the support loss before and after. The model is left unchanged and in eval mode.
    """
    import torch

    from cxr_tools.eval.metrics import episode_metrics
    from cxr_tools.methods.maml import adapt, multilabel_bce

    norm = str(getattr(model, "normalisation", "unit"))
    model.eval()
    out = []
    for ep in episodes:
        sx, sy, qx, qy = episode_tensors(cache, ep, norm, device)
        adapted = adapt(model, sx, sy, maml)
        with torch.no_grad():
            logits = adapted(qx)
            before = model(qx)  # the initialisation itself, in eval mode (BatchNorm on running statistics)
            loss_after = float(multilabel_bce(logits, qy))
            loss_before = float(multilabel_bce(before, qy))
        per_class = episode_metrics(ep.query_targets, torch.sigmoid(logits).cpu().numpy(), ep.classes, None)
        out.append(
            {
                "auc": float(np.nanmean([m["auc"] for m in per_class.values()])),
                "ap": float(np.nanmean([m["ap"] for m in per_class.values()])),
                "query_loss_before": loss_before,
                "query_loss_after": loss_after,
                "support_loss_before": adapted.support_losses[0],
                "support_loss_after": adapted.support_losses[-1],
            }
        )
    return out


def summarise_episodes(records: Sequence[dict[str, float]], prefix: str = "") -> dict[str, float]:
    """Means over episode records of :func:`evaluate_episodes`: ``auc`` with its 95% CI half-width (``auc_ci95``),
    and ``ap`` and the losses (NaN-aware), each name prefixed with ``prefix``."""
    from cxr_tools.eval.metrics import mean_ci

    auc = mean_ci([r["auc"] for r in records])
    out = {f"{prefix}auc": auc.mean, f"{prefix}auc_ci95": auc.ci95}
    for key in ("ap", "query_loss_before", "query_loss_after", "support_loss_before", "support_loss_after"):
        out[f"{prefix}{key}"] = float(np.nanmean([r[key] for r in records]))
    return out


def meta_gradient(
    model: nn.Module,
    sampler: Any,
    cache: CacheReader,
    keys: Sequence[Sequence[int]],
    maml: MamlConfig,
    device: torch.device,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """One meta-gradient over the episodes ``sampler`` draws with ``numpy_generator(*key)``, one per key.

    ``backward`` backpropagates each task's loss (the training loop's GradScaler-aware one; default
    ``loss.backward()``).

    Fills the ``.grad`` of ``model`` (:func:`~cxr_tools.methods.maml.meta_backward`) and returns the meta-loss
    and, with adaptation steps, the mean support loss before the first and after the last inner step. A task
    depends on its key alone, so resuming and sharding tasks over ranks need no sampler state; its class slots
    are shuffled (``shuffle=True``), so no head output is tied to one class.
    """
    from cxr_tools.methods.maml import meta_backward
    from cxr_tools.runtime.seeding import numpy_generator

    norm = str(getattr(model, "normalisation", "unit"))
    episodes = [sampler.sample(numpy_generator(*key), shuffle=True) for key in keys]
    info = meta_backward(model, [episode_tensors(cache, ep, norm, device) for ep in episodes], maml, backward=backward)
    values = {"loss": info.loss}
    if maml.adapt_steps:
        values["support_loss_before"] = float(np.mean([t.support_losses[0] for t in info.tasks]))
        values["support_loss_last_step"] = float(np.mean([t.support_losses[-1] for t in info.tasks]))
    return values
