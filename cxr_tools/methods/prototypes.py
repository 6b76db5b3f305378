"""Nearest-prototype scoring for multi-label episodes (Prototypical Networks, Snell, Swersky & Zemel 2017).

A prototypical network classifies a query by the softmax over negative distances to class prototypes, each
prototype the mean embedding of that class's support examples. Chest X-ray findings are not mutually exclusive,
so a softmax *across findings* would be wrong (docs/science.md). Instead every episode class ``c`` is its own
binary problem with two prototypes:

* ``p⁺_c`` = mean embedding of the support images positive for ``c``;
* ``p⁻_c`` = mean embedding of the support images negative for ``c`` (the episode's pure negatives *and* the
  positives of the other classes that lack ``c``); NaN (unknown) targets are left out of both;

and the probability that a query ``q`` shows ``c`` is the two-way softmax over negative distances::

    P(c | q) = exp(-d(q, p⁺_c) / T) / (exp(-d(q, p⁺_c) / T) + exp(-d(q, p⁻_c) / T))
             = sigmoid((d(q, p⁻_c) - d(q, p⁺_c)) / T)

``d`` is the squared Euclidean distance (Snell et al.'s choice) or, for a Siamese run trained with the cosine
distance, ``1 - cos(q, p)`` (prototypes are means, so they are re-normalised for the cosine). Embeddings are
L2-normalised: a Siamese run's projection (what its contrastive loss shaped) or the backbone's pooled features
for other runs. The temperature ``T`` only calibrates: the ranking of queries (AUC, AP) and the decision at
probability 0.5 (nearer to ``p⁺`` than to ``p⁻``) are the same for every ``T``. Nothing is trained, so the
scores are deterministic and each query is embedded on its own in eval mode.

**Support scores** (what ``--threshold support`` chooses on): each support image is scored *leave-one-out*,
against prototypes built from the other support images, so it is not scored against a prototype it is part of
(with one shot, its own positive prototype would be itself, at distance 0). A class the image is the only
positive (or only negative) of keeps that image's full-set prototype. The embedding is computed once, so this
costs n small matrix products.

**ProtoNet-ML runs** (``cxr meta-train --algorithm protonet``) are scored with the rule they were trained with
instead (``rule="mean-distance"``, :mod:`cxr_tools.methods.protonet`): their own embedding, positive prototypes
only, ``sigmoid(τ - ||z_q - p_c||)`` with ``τ`` chosen on the support set, no temperature.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.methods.adapters import check_support, fit_embedded, outputs_in_chunks

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from cxr_tools.methods.embedding_cache import FeatureSource

PROTOTYPE_DISTANCES: tuple[str, ...] = ("euclidean", "cosine")
#: Decision rules: ``pos-neg`` (positive and negative prototypes, above) and ``mean-distance`` (ProtoNet-ML's).
PROTOTYPE_RULES: tuple[str, ...] = ("pos-neg", "mean-distance")

EmbedFn = Callable[["Tensor"], "Tensor"]


def embedding_function(model: nn.Module, meta: Mapping[str, Any] | None) -> tuple[EmbedFn, str]:
    """``(embed, distance)`` for a run's model: its L2-normalised embedding (:func:`~cxr_tools.models.siamese.embedder`)
    and the prototype distance: cosine for a Siamese run trained with it, else the squared Euclidean distance; a
    protonet run's trained embedding and plain Euclidean distance (:mod:`cxr_tools.methods.protonet`)."""
    from cxr_tools.methods.protonet import embedding_fn, is_protonet
    from cxr_tools.models.siamese import embedder, trained_distance

    if is_protonet(meta):
        return embedding_fn(model, meta), "euclidean"
    return embedder(model, meta), "cosine" if trained_distance(meta) == "cosine" else "euclidean"


def prototype_adapter(
    model: nn.Module,
    meta: Mapping[str, Any] | None,
    ways: int,
    *,
    temperature: float = 0.1,
    batch_size: int = 256,
    rule: str = "pos-neg",
) -> PrototypeAdapter:
    """Prototypes on a run's embedding (:func:`embedding_function`), with its shared feature source: a Siamese
    run's ``output``, else ``forward_features``, L2-normalised (what ``cxr evaluate`` caches); a protonet run's
    ``forward_features`` pooled to its trained width."""
    from cxr_tools.methods.embedding_cache import model_source
    from cxr_tools.methods.logistic import normalise_rows
    from cxr_tools.methods.protonet import embedding_dim, is_protonet, pool
    from cxr_tools.models.siamese import is_siamese

    embed, distance = embedding_function(model, meta)
    source = model_source(model, "output" if is_siamese(meta) else "forward_features", batch_size)
    post: Callable[[Tensor], Tensor] = normalise_rows
    if is_protonet(meta):
        post = functools.partial(pool, dim=embedding_dim(meta))
    return PrototypeAdapter(
        embed,
        model,
        ways,
        distance=distance,
        temperature=temperature,
        batch_size=batch_size,
        rule=rule,
        source=source,
        post=post,
    )


def prototypes(embeddings: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative prototypes ``[ways, D]`` each, from support ``embeddings`` ``[n, D]`` and targets.

    Raises:
        ModelError: a class without a positive or without a negative support image.
    """
    import torch

    y = targets.float()
    known = ~torch.isnan(y)
    pos = (torch.nan_to_num(y, nan=0.0) > 0.5) & known
    neg = (torch.nan_to_num(y, nan=1.0) < 0.5) & known
    empty = [str(j) for j in range(y.shape[1]) if not bool(pos[:, j].any()) or not bool(neg[:, j].any())]
    if empty:
        raise ModelError(
            f"Class column(s) {', '.join(empty)} lack a positive or a negative support image.",
            "Give positives and negatives of every class in the support set.",
        )
    pos_w = pos.to(embeddings.dtype)
    neg_w = neg.to(embeddings.dtype)
    proto_pos = (pos_w.T @ embeddings) / pos_w.sum(dim=0, keepdim=True).T
    proto_neg = (neg_w.T @ embeddings) / neg_w.sum(dim=0, keepdim=True).T
    return proto_pos, proto_neg


def distances(queries: Tensor, protos: Tensor, distance: str) -> Tensor:
    """``[n, ways]`` distances of each query embedding to each prototype."""
    import torch.nn.functional as F

    if distance == "euclidean":
        return (queries[:, None, :] - protos[None, :, :]).pow(2).sum(dim=2)
    if distance == "cosine":
        return 1.0 - F.normalize(queries, dim=1) @ F.normalize(protos, dim=1).T
    raise ConfigError(f"Unknown prototype distance '{distance}'.", f"Use one of: {', '.join(PROTOTYPE_DISTANCES)}.")


def prototype_probabilities(
    queries: Tensor, proto_pos: Tensor, proto_neg: Tensor, *, distance: str = "euclidean", temperature: float = 0.1
) -> Tensor:
    """``P(c | q) = sigmoid((d(q, p⁻_c) - d(q, p⁺_c)) / T)``, shape ``[n, ways]`` (module docstring)."""
    import torch

    d_pos = distances(queries, proto_pos, distance)
    d_neg = distances(queries, proto_neg, distance)
    return torch.sigmoid((d_neg - d_pos) / temperature)


class PrototypeAdapter:
    """Nearest-prototype few-shot scoring on a fixed embedding (module docstring).

    Args:
        embed: images ``[n, 1, H, W]`` -> L2-normalised embeddings ``[n, D]`` (see :func:`embedding_function`).
        module: the network behind ``embed`` (put in eval mode while embedding).
        ways: classes per support set.
        distance: ``euclidean`` (squared) or ``cosine``.
        temperature: softmax temperature ``T`` (``pos-neg`` only; the trained rule has none: recorded as 1).
        rule: ``pos-neg`` (module docstring) or ``mean-distance`` (a protonet run's trained rule).
        source, post: the frozen network function behind ``embed`` (what cached features are keyed by) and what
            turns its rows into ``embed``'s (an L2 normalisation, ProtoNet-ML's pooling), or None when ``embed`` is
            not a shared one.
    """

    method = "prototype"
    support_scoring = "leave-one-out (each support image against prototypes of the others)"

    def __init__(
        self,
        embed: EmbedFn,
        module: nn.Module,
        ways: int,
        *,
        distance: str = "euclidean",
        temperature: float = 0.1,
        batch_size: int = 256,
        rule: str = "pos-neg",
        source: FeatureSource | None = None,
        post: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if rule not in PROTOTYPE_RULES:
            raise ConfigError(f"Unknown prototype rule '{rule}'.", f"Use {', '.join(PROTOTYPE_RULES)}.")
        if distance not in PROTOTYPE_DISTANCES:
            raise ConfigError(f"Unknown prototype distance '{distance}'.", f"Use {', '.join(PROTOTYPE_DISTANCES)}.")
        if not temperature > 0:
            raise ConfigError(f"The prototype temperature must be > 0 (got {temperature}).")
        self.embed = embed
        self.module = module
        self.ways = ways
        self.distance = distance
        self.rule = rule
        self.temperature = float(temperature) if rule == "pos-neg" else 1.0
        self.batch_size = batch_size
        if rule == "mean-distance":
            self.support_scoring = "leave-one-out (each support image against the rule built from the others)"
        self.feature_source = source
        self.feature_post = post
        #: Base prototypes of known classes (a protonet run's, set by ``cxr evaluate`` for generalized episodes).
        self.known: dict[str, Tensor] = {}
        self.seen_prototypes: Tensor | None = None

    def with_seen(self, seen: Sequence[str]) -> PrototypeAdapter:
        """This adapter for a generalized episode whose last ``len(seen)`` classes are ``seen``: with base
        prototypes in :attr:`known` (``mean-distance`` rule), those classes use them instead of the support's
        (docs/science.md, "Generalized episodes"); without, the support's like the unseen ones."""
        if not self.known or self.rule != "mean-distance":
            return self
        missing = [c for c in seen if c not in self.known]
        if missing:
            raise ModelError(f"No base prototype of the seen class(es) {', '.join(missing)}.", "Report this as a bug.")
        import torch

        clone = copy.copy(self)
        clone.seen_prototypes = torch.stack([self.known[c] for c in seen])
        return clone

    def embeddings(self, x: Tensor) -> Tensor:
        """Embeddings of ``x`` in eval mode, ``batch_size`` at a time (CPU float32)."""
        return outputs_in_chunks(self.embed, self.module, x, self.batch_size)

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> Any:
        """Prototypes of the support images' embeddings; the scorer takes images."""
        return fit_embedded(self, self.embeddings, support_x, support_y, generator)

    def fit_features(
        self, support_features: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None
    ) -> PrototypeScorer:
        """Prototypes of support embeddings ``[n, D]`` (the rows :meth:`embeddings` gives); the scorer takes
        embeddings."""
        check_support(support_y, self.ways)
        targets = support_y.detach().float().cpu()
        if self.rule == "mean-distance":
            from cxr_tools.methods.protonet import MeanDistanceScorer

            return MeanDistanceScorer(support_features, targets, fixed=self.seen_prototypes)
        proto_pos, proto_neg = prototypes(support_features, targets)
        return PrototypeScorer(self, proto_pos, proto_neg)


def leave_one_out_prototypes(embeddings: Tensor, targets: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """The prototypes of the support set without image ``i`` (per class: the full set's where ``i`` is the only
    positive or the only negative of that class)."""
    import torch

    full_pos, full_neg = prototypes(embeddings, targets)
    y = targets.float()
    known = ~torch.isnan(y)
    pos = (torch.nan_to_num(y, nan=0.0) > 0.5) & known
    neg = (torch.nan_to_num(y, nan=1.0) < 0.5) & known
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[i] = False
    out = []
    for mask, full in ((pos, full_pos), (neg, full_neg)):
        m = (mask & keep[:, None]).to(embeddings.dtype)  # [n, ways]
        count = m.sum(dim=0)
        loo = (m.T @ embeddings) / count.clamp(min=1)[:, None]
        out.append(torch.where((count > 0)[:, None], loo, full))
    return out[0], out[1]


class PrototypeScorer:
    """Scores embeddings against the prototypes of one support set (and that set leave-one-out)."""

    def __init__(self, adapter: PrototypeAdapter, proto_pos: Tensor, proto_neg: Tensor) -> None:
        self.adapter = adapter
        self.proto_pos = proto_pos
        self.proto_neg = proto_neg

    def support_scores(self, support_features: Tensor, support_y: Tensor) -> Tensor:
        """Each support image's probabilities against the prototypes of the others (module docstring)."""
        import torch

        a = self.adapter
        targets = support_y.detach().float().cpu()
        rows = []
        for i in range(len(support_features)):
            pos, neg = leave_one_out_prototypes(support_features, targets, i)
            rows.append(
                prototype_probabilities(
                    support_features[i : i + 1], pos, neg, distance=a.distance, temperature=a.temperature
                )
            )
        return torch.cat(rows)

    def predict(self, features: Tensor) -> Tensor:
        a = self.adapter
        return prototype_probabilities(
            features, self.proto_pos, self.proto_neg, distance=a.distance, temperature=a.temperature
        )
