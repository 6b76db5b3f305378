"""ProtoNet-ML: prototypical networks for multi-label episodes, as MetaChest runs them.

Source: Montalvo-Lezama & Fuentes-Pineda 2026, "MetaChest: generalized few-shot learning of pathologies from
chest X-rays" (Visual Computing for Industry, Biomedicine, and Art 9:4, doi:10.1186/s42492-026-00214-4;
arXiv:2509.25590), which extends Prototypical Networks (Snell, Swersky & Zemel 2017) to multi-label episodes
("ProtoNet-ML"). The paper's text describes the extension only in outline; the rule below follows the authors'
released code (github.com/bereml/meta-cxr, ``method/protonet.py``: ``compute_protos``, ``compute_distance``,
``compute_logits`` with its default ``protonet_mean_set='trn'``), so it is what their numbers measure:

* **Embedding** ``z = f(x)``: the network's pooled backbone features (``forward_features``), average-pooled
  down to at most :data:`EMBEDDING_DIM` (128) numbers (their ``AdaptiveAvgPool1d(128)`` head); no L2
  normalisation.
* **Prototypes**: one per episode class ``c``, ``p_c`` = mean embedding of the support images *positive* for
  ``c``. Multi-label support images count towards every class they carry; there is no negative prototype.
* **Distance** ``d(z, p) = ||z - p||₂`` (the Euclidean distance itself, not its square).
* **Decision rule (support-chosen, nothing learned)**: the threshold ``τ`` is the mean distance of the support
  embeddings to the prototypes (over every support image and every class), and the logit of class ``c`` for a
  query ``q`` is ``τ - d(z_q, p_c)``: a query nearer to ``p_c`` than support images typically are to a
  prototype scores above 0.5. There is no temperature or bias to learn; the network learns the scale of its
  embedding.
* **Loss**: binary cross-entropy with logits over the queries' multi-hot targets (NaN = unknown, masked:
  :func:`~cxr_tools.methods.maml.losses.multilabel_bce`), gradients through the prototypes and ``τ``.

``cxr meta-train --algorithm protonet`` trains the embedding with this loss on the same episodes as MAML
(:func:`protonet_gradient`); ``cxr evaluate`` scores a protonet run with the ``prototype`` method under this
rule (:class:`MeanDistanceScorer`); :func:`base_prototypes` gives the prototypes of known (meta-train) classes
for generalized episodes. Two safeguards the released code lacks: a distance of exactly 0 (a one-shot support
image is its class's prototype) gets a zero gradient instead of the square root's infinite one (NaN weights), and
a class without a positive support image is an error rather than a division by zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode

#: The meta-learning algorithms of ``cxr meta-train --algorithm`` (``--first-order`` = ``fomaml``).
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "protonet")
#: The decision rule of a protonet run (``extra.protonet.rule`` in model.json); the ``prototype`` method's own
#: rule for other runs is ``pos-neg`` (:mod:`cxr_tools.methods.prototypes`).
RULE = "mean-distance"
#: MetaChest's embedding size: pooled backbone features averaged down to this many numbers (fewer stay as is).
EMBEDDING_DIM = 128

EmbedFn = Callable[["Tensor"], "Tensor"]


def embed(model: nn.Module, x: Tensor, dim: int = EMBEDDING_DIM) -> Tensor:
    """ProtoNet-ML embeddings ``[n, min(D, dim)]`` of images ``x`` (module docstring)."""
    if not hasattr(model, "forward_features"):
        raise ModelError(f"{type(model).__name__} has no forward_features(); ProtoNet-ML needs a zoo model.")
    forward_features: Any = model.forward_features
    return pool(forward_features(x), dim)


def pool(features: Tensor, dim: int = EMBEDDING_DIM) -> Tensor:
    """Backbone features ``[n, ...]`` averaged down to at most ``dim`` numbers per row (their
    ``AdaptiveAvgPool1d``): what ``cxr evaluate`` applies to a protonet run's cached backbone features."""
    import torch.nn.functional as F

    features = features.flatten(1)
    if features.shape[1] > dim:
        features = F.adaptive_avg_pool1d(features[:, None, :], dim)[:, 0, :]
    return features


def embedding_fn(model: nn.Module, meta: Mapping[str, Any] | None) -> EmbedFn:
    """The embedding a protonet run was trained with (its ``extra.protonet.embedding_dim``)."""
    dim = embedding_dim(meta)
    return lambda x: embed(model, x, dim)


def embedding_dim(meta: Mapping[str, Any] | None) -> int:
    """The embedding width a protonet run was trained with (its ``extra.protonet.embedding_dim``)."""
    return int(protonet_settings(meta).get("embedding_dim", EMBEDDING_DIM))


def protonet_settings(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """``extra.protonet`` of a run's model.json (empty for other runs)."""
    return dict(((meta or {}).get("extra") or {}).get("protonet") or {})


def is_protonet(meta: Mapping[str, Any] | None) -> bool:
    return str((meta or {}).get("training")) == "protonet"


def positive_prototypes(embeddings: Tensor, targets: Tensor) -> Tensor:
    """``[ways, D]``: per class, the mean embedding of the support images positive for it (NaN = not counted).

    Raises:
        ModelError: a class without a positive support image.
    """
    import torch

    y = targets.to(embeddings.dtype)
    pos = (torch.nan_to_num(y, nan=0.0) > 0.5).to(embeddings.dtype)
    count = pos.sum(dim=0)
    if bool((count == 0).any()):
        empty = ", ".join(str(j) for j in torch.nonzero(count == 0).flatten().tolist())
        raise ModelError(f"Class column(s) {empty} have no positive support image.", "Give positives of every class.")
    return (pos.T @ embeddings) / count[:, None]


def distances(embeddings: Tensor, protos: Tensor) -> Tensor:
    """``[n, ways]`` Euclidean distances (not squared), with a finite gradient at distance 0."""
    import torch

    sq = (embeddings[:, None, :] - protos[None, :, :]).pow(2).sum(dim=2)
    nonzero = sq > 0  # sqrt's gradient at 0 is infinite: take it only where the distance is positive
    return torch.where(nonzero, torch.where(nonzero, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def support_threshold(support: Tensor, protos: Tensor) -> Tensor:
    """``τ``: the mean distance of the support embeddings to the prototypes (scalar)."""
    return distances(support, protos).mean()


def protonet_logits(support: Tensor, support_y: Tensor, queries: Tensor) -> Tensor:
    """``[n_queries, ways]`` logits ``τ - d(z_q, p_c)`` (module docstring)."""
    protos = positive_prototypes(support, support_y)
    return support_threshold(support, protos) - distances(queries, protos)


def protonet_loss(support: Tensor, support_y: Tensor, queries: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss, logits)``: masked BCE-with-logits of the queries' ProtoNet-ML logits (differentiable in every
    embedding)."""
    from cxr_tools.methods.maml.losses import multilabel_bce

    logits = protonet_logits(support.float(), support_y.float(), queries.float())
    return multilabel_bce(logits, query_y.float()), logits


def leave_one_out_logits(support: Tensor, support_y: Tensor) -> Tensor:
    """``[n, ways]`` logits of each support image against the rule built from the *other* support images (its
    prototype where it is a class's only positive stays the full set's), as ``--threshold support`` needs."""
    import torch

    full = positive_prototypes(support, support_y)
    pos = torch.nan_to_num(support_y.to(support.dtype), nan=0.0) > 0.5
    rows = []
    for i in range(len(support)):
        keep = torch.ones(len(support), dtype=torch.bool)
        keep[i] = False
        m = (pos & keep[:, None]).to(support.dtype)
        count = m.sum(dim=0)
        protos = torch.where((count > 0)[:, None], (m.T @ support) / count.clamp(min=1)[:, None], full)
        tau = support_threshold(support[keep], protos) if len(support) > 1 else support_threshold(support, protos)
        rows.append(tau - distances(support[i : i + 1], protos))
    return torch.cat(rows)


class MeanDistanceScorer:
    """Scores query embeddings with a protonet run's trained rule: ``sigmoid(τ - d(z_q, p_c))`` for one support set.

    ``support`` and ``targets`` are the support set's embeddings and targets (CPU float32); ``fixed``: base
    prototypes that replace the support's for the last classes (the seen classes of a generalized episode;
    :func:`base_prototypes`). Like every frozen-feature scorer it takes embeddings (the prototype adapter wraps it
    to take images: :func:`~cxr_tools.methods.adapters.fit_embedded`).
    """

    def __init__(self, support: Tensor, targets: Tensor, fixed: Tensor | None = None) -> None:
        import torch

        self.support = support
        self.targets = targets
        self.fixed = fixed  # base prototypes of the last classes (seen ones of a generalized episode), else None
        protos = positive_prototypes(support, targets)
        if fixed is not None:
            protos = torch.cat([protos[: len(protos) - len(fixed)], fixed.to(protos.dtype)])
        self.protos = protos
        self.tau = support_threshold(support, self.protos)

    def predict(self, features: Tensor) -> Tensor:
        import torch

        return torch.sigmoid(self.tau - distances(features, self.protos))

    def support_scores(self, support_features: Tensor, support_y: Tensor) -> Tensor:
        import torch

        logits = leave_one_out_logits(self.support, support_y.detach().float().cpu())
        if self.fixed is not None:  # base prototypes owe nothing to the support: no image to leave out
            k = len(self.fixed)
            logits[:, -k:] = self.tau - distances(self.support, self.fixed.to(self.support.dtype))
        return torch.sigmoid(logits)


def protonet_gradient(
    model: nn.Module,
    sampler: Any,
    cache: CacheReader,
    keys: Sequence[Sequence[int]],
    device: torch.device,
    backward: Callable[[Tensor], None] | None = None,
    *,
    dim: int = EMBEDDING_DIM,
) -> dict[str, float]:
    """Accumulate the mean ProtoNet-ML loss gradient of the episodes ``sampler`` draws with
    ``numpy_generator(*key)`` (one per key, as MAML's :func:`~cxr_tools.methods.episodes.meta_gradient` draws
    them) into ``.grad``, one episode graph at a time; return the loss and the output-health numbers the collapse
    watch reads. BatchNorm runs on its running statistics, as in evaluation."""
    import torch

    from cxr_tools.methods.episodes import episode_tensors, output_health
    from cxr_tools.methods.maml.norm import frozen_batchnorm
    from cxr_tools.runtime.seeding import numpy_generator

    norm = str(getattr(model, "normalisation", "unit"))
    episodes = [sampler.sample(numpy_generator(*key), shuffle=True) for key in keys]
    losses: list[float] = []
    logits: list[Tensor] = []
    with frozen_batchnorm(model):
        for ep in episodes:
            sx, sy, qx, qy = episode_tensors(cache, ep, norm, device)
            z = embed(model, torch.cat([sx, qx]), dim)
            loss, out = protonet_loss(z[: len(sx)], sy, z[len(sx) :], qy)
            (backward or torch.Tensor.backward)(loss / len(episodes))
            losses.append(float(loss.detach()))
            logits.append(out.detach())
    return {"loss": float(np.mean(losses)), **output_health(episodes, logits)}


def evaluate_protonet_episodes(
    model: nn.Module, cache: CacheReader, episodes: Sequence[Episode], device: torch.device, *, dim: int = EMBEDDING_DIM
) -> list[dict[str, float]]:
    """Score each episode's queries with the trained rule (no gradients, eval mode): one record per episode with
    ``auc`` and ``ap`` (means over its classes) and ``query_loss``."""
    import torch

    from cxr_tools.eval.metrics import episode_metrics
    from cxr_tools.methods.episodes import episode_tensors
    from cxr_tools.methods.maml.norm import frozen_batchnorm

    norm = str(getattr(model, "normalisation", "unit"))
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad(), frozen_batchnorm(model):
            for ep in episodes:
                sx, sy, qx, qy = episode_tensors(cache, ep, norm, device)
                z = embed(model, torch.cat([sx, qx]), dim)
                loss, logits = protonet_loss(z[: len(sx)], sy, z[len(sx) :], qy)
                scores = torch.sigmoid(logits).cpu().numpy()
                per_class = episode_metrics(ep.query_targets, scores, ep.classes, None)
                out.append(
                    {
                        "auc": float(np.nanmean([m["auc"] for m in per_class.values()])),
                        "ap": float(np.nanmean([m["ap"] for m in per_class.values()])),
                        "query_loss": float(loss),
                    }
                )
    finally:
        model.train(was_training)
    return out


def base_prototypes(
    model: nn.Module,
    meta: Mapping[str, Any] | None,
    cache: CacheReader,
    rows: np.ndarray,
    classes: Sequence[str],
    *,
    batch_size: int = 256,
) -> Tensor:
    """Prototypes ``[len(classes), D]`` (CPU float32) of known classes from cache ``rows`` — for generalized
    episodes, the meta-train pool's images (``meta_split_pools(...)["train"]`` with the run's pool seed) and the
    meta-train classes. Each prototype is the mean embedding of the rows positive for its class, embedded as the
    ``prototype`` method embeds for this run (:func:`~cxr_tools.methods.prototypes.embedding_function`: the
    trained ProtoNet-ML embedding for a protonet run); compare queries with them through the same rule.

    Raises:
        ModelError: a class without a positive image among ``rows``.
    """
    import torch

    from cxr_tools.methods.adapters import model_device, outputs_in_chunks
    from cxr_tools.methods.prototypes import embedding_function
    from cxr_tools.models.inputs import to_model_input

    rows = np.asarray(rows, dtype=np.int64)
    targets = cache.raw_labels(list(classes))[rows] == 1
    keep = rows[targets.any(axis=1)]
    targets = targets[targets.any(axis=1)]
    fn, _ = embedding_function(model, meta)
    norm = str(getattr(model, "normalisation", "unit"))
    device = model_device(model)
    parts = []
    for i in range(0, len(keep), batch_size):
        x = to_model_input(cache.read(keep[i : i + batch_size]), norm, device)
        parts.append(outputs_in_chunks(fn, model, x, batch_size))
    if not parts:
        raise ModelError(f"No image among the given rows is positive for any of {', '.join(classes)}.")
    return positive_prototypes(torch.cat(parts), torch.from_numpy(targets.astype(np.float32)))
