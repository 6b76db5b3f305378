"""Episodes as model-ready tensors (one path for meta-training, meta-validation and ``cxr evaluate``), and the
MAML adapt-then-score of a list of episodes that meta-validation uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode
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
    width = getattr(model, "num_classes", None)
    model.eval()
    out = []
    for ep in episodes:
        sx, sy, qx, qy = episode_tensors(cache, ep, norm, device)
        ways = sy.shape[1]
        if isinstance(width, int) and width > ways:  # fewer-way (validation) episodes: unused outputs masked out
            sy, qy = _pad_unknown(sy, width), _pad_unknown(qy, width)
        adapted = adapt(model, sx, sy, maml)
        with torch.no_grad():
            logits = adapted(qx)
            before = model(qx)  # the initialisation itself, in eval mode (BatchNorm on running statistics)
            loss_after = float(multilabel_bce(logits, qy))
            loss_before = float(multilabel_bce(before, qy))
        scores = torch.sigmoid(logits[:, :ways]).cpu().numpy()
        per_class = episode_metrics(ep.query_targets, scores, ep.classes, None)
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


def _pad_unknown(targets: torch.Tensor, width: int) -> torch.Tensor:
    """``targets`` ``[n, w]`` widened to ``[n, width]`` with NaN ("unknown": no loss, no gradient) columns, so a
    model with ``width`` outputs adapts to a ``w``-way episode in its first ``w`` outputs."""
    import torch

    pad = torch.full((targets.shape[0], width - targets.shape[1]), float("nan"), dtype=targets.dtype)
    return torch.cat([targets, pad.to(targets.device)], dim=1)


def summarise_episodes(records: Sequence[dict[str, float]], prefix: str = "") -> dict[str, float]:
    """Means over episode records of :func:`evaluate_episodes` (or ProtoNet-ML's, which have ``query_loss``):
    ``auc`` with its 95% CI half-width (``auc_ci95``), and ``ap`` and the losses the records have (NaN-aware),
    each name prefixed with ``prefix``."""
    from cxr_tools.eval.metrics import mean_ci

    auc = mean_ci([r["auc"] for r in records])
    out = {f"{prefix}auc": auc.mean, f"{prefix}auc_ci95": auc.ci95}
    keys = ("ap", "query_loss", "query_loss_before", "query_loss_after", "support_loss_before", "support_loss_after")
    for key in (k for k in keys if records and all(k in r for r in records)):
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

    Fills the ``.grad`` of ``model`` (:func:`~cxr_tools.methods.maml.meta_backward`) and returns the meta-loss,
    the numbers :func:`output_health` gives (what :mod:`cxr_tools.methods.collapse` watches) and, with
    adaptation steps, the mean support loss before the first and after the last inner step. A task
    depends on its key alone, so resuming and sharding tasks over ranks need no sampler state; its class slots
    are shuffled (``shuffle=True``), so no head output is tied to one class.
    """
    from cxr_tools.methods.maml import meta_backward
    from cxr_tools.runtime.seeding import numpy_generator

    norm = str(getattr(model, "normalisation", "unit"))
    episodes = [sampler.sample(numpy_generator(*key), shuffle=True) for key in keys]
    info = meta_backward(model, [episode_tensors(cache, ep, norm, device) for ep in episodes], maml, backward=backward)
    values = {"loss": info.loss, **output_health(episodes, [t.query_logits for t in info.tasks])}
    if maml.adapt_steps:
        values["support_loss_before"] = float(np.mean([t.support_losses[0] for t in info.tasks]))
        values["support_loss_last_step"] = float(np.mean([t.support_losses[-1] for t in info.tasks]))
    return values


def output_health(episodes: Sequence[Episode], query_logits: Sequence[torch.Tensor]) -> dict[str, float]:
    """Whether the adapted outputs still say something, means over the tasks of a meta-step.

    ``prior_loss`` is the cross-entropy of predicting each column's positive rate for every query (the loss of a
    network collapsed to the label prior: 0.6365 for one positive in three); ``query_auc`` the AUC of the
    adapted query scores (columns with positives and negatives); ``output_spread`` the standard deviation of the
    adapted query logits across the query images.
    """
    priors: list[float] = []
    aucs: list[float] = []
    spreads: list[float] = []
    for ep, logits in zip(episodes, query_logits, strict=True):
        targets = np.asarray(ep.query_targets, dtype=np.float64)
        scores = logits.detach().float().cpu().numpy().astype(np.float64)[:, : targets.shape[1]]
        rate = np.clip(targets.mean(axis=0), 1e-6, 1 - 1e-6)
        priors.append(float(np.mean(-(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)))))
        aucs.extend(_auc(targets[:, j] > 0.5, scores[:, j]) for j in range(targets.shape[1]))
        spreads.append(float(scores.std(axis=0).mean()) if len(scores) > 1 else 0.0)
    known = [a for a in aucs if a == a]
    return {
        "prior_loss": float(np.mean(priors)),
        "query_auc": float(np.mean(known)) if known else float("nan"),
        "output_spread": float(np.mean(spreads)),
    }


def _auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half; NaN without both positives and negatives."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    greater = (scores[positive][:, None] > scores[~positive][None, :]).sum()
    ties = (scores[positive][:, None] == scores[~positive][None, :]).sum()
    return float((greater + 0.5 * ties) / (n_pos * n_neg))
