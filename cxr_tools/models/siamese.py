"""Siamese network: a zoo backbone, a linear projection to the embedding size, L2 normalisation.

Design choice: the projection *is* the zoo model's linear head. A Siamese network on ``resnet18`` with 256
dimensions wraps ``create_model("resnet18", num_classes=256)``, whose ``forward_features`` is the backbone and
whose ``head`` is the ``Linear(num_features, 256)`` projection; :class:`SiameseNet` only adds the L2
normalisation. So the weights a Siamese run saves are an ordinary zoo model folder (:func:`save_model_dir` /
:func:`load_model_dir` work unchanged, training kind ``siamese``), and a MAML or fine-tune run can start from the
backbone with ``reset_head``.

:func:`embedder` is the one embedding every consumer of a saved run uses (similarity, prototypes, pair metrics):
a Siamese run's L2-normalised projection, any other run's L2-normalised pooled backbone features.

Distances on the unit sphere (embeddings are L2-normalised, so both lie in [0, 2]):

* ``cosine``: ``d = 1 - <a, b>``;
* ``euclidean``: ``d = ||a - b||_2`` (``d² = 2 - 2 <a, b>``).

:func:`similarity` maps either to ``1 - d / 2`` in [0, 1] (1 = same direction), a score whose order is the
distance's reversed order, which pair AUC and thresholds use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cxr_tools.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from cxr_tools.models.backbones import Classifier

DISTANCES: tuple[str, ...] = ("cosine", "euclidean")
EmbedFn = Callable[[torch.Tensor], torch.Tensor]
#: Squared distances below this are clamped before the square root (finite gradients for identical embeddings).
_EPS = 1e-12


def check_distance(distance: str) -> str:
    """``distance`` if it is known, else a :class:`ConfigError` naming the choices."""
    if distance not in DISTANCES:
        raise ConfigError(f"Unknown distance '{distance}'.", f"Use one of: {', '.join(DISTANCES)}.")
    return distance


def pair_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "cosine", *, squared: bool = False) -> torch.Tensor:
    """Distance of each row of ``a`` [B, D] to the same row of ``b`` (both L2-normalised), shape [B].

    ``squared=True`` returns ``d²`` without a square root (smooth at ``d = 0``).
    """
    check_distance(distance)
    if distance == "cosine":
        d = 1.0 - (a * b).sum(dim=1)
        return d * d if squared else d
    d2 = (a - b).pow(2).sum(dim=1)
    return d2 if squared else d2.clamp_min(_EPS).sqrt()


def similarity(a: torch.Tensor, b: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Similarity ``1 - d / 2`` in [0, 1] of L2-normalised embedding pairs (1 = identical direction)."""
    return 1.0 - pair_distance(a, b, distance) / 2.0


class SiameseNet(nn.Module):
    """Twin embedding network sharing one backbone (module docstring).

    Args:
        backbone: a zoo model whose head projects to the embedding size (``num_classes = embedding_dim``).
        distance: ``cosine`` or ``euclidean`` (used by :meth:`similarity`).
    """

    def __init__(self, backbone: Classifier, distance: str = "cosine") -> None:
        super().__init__()
        if int(getattr(backbone, "num_classes", 0)) < 1:
            raise ModelError("A Siamese backbone needs a projection head (num_classes = embedding size >= 1).")
        self.backbone = backbone
        self.distance = check_distance(distance)

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``[B, embedding_dim]`` of images ``[B, 1, H, W]``."""
        return l2_embed(self.backbone, x)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> Any:
        """``embed(a)``, or the pair ``(embed(a), embed(b))`` computed in one batch."""
        if b is None:
            return self.embed(a)
        z = self.embed(torch.cat([a, b]))
        return z[: len(a)], z[len(a) :]

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Similarity in [0, 1] of image pairs ``a[i]``, ``b[i]`` (see :func:`similarity`)."""
        za, zb = self(a, b)
        return similarity(za, zb, self.distance)


def l2_embed(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as float32 rows of unit length: the embedding every distance here assumes."""
    return F.normalize(module(x).float(), dim=1)


def is_siamese(meta: Mapping[str, Any] | None) -> bool:
    """Whether a model card (``model.json``) belongs to a ``cxr train-siamese`` run."""
    return meta is not None and meta.get("training") == "siamese"


def trained_distance(meta: Mapping[str, Any] | None) -> str | None:
    """The distance a Siamese run was trained with (``extra.distance``, checked), None for other runs."""
    if not is_siamese(meta):
        return None
    return check_distance(str(((meta or {}).get("extra") or {}).get("distance") or "cosine"))


def embedder(model: nn.Module, meta: Mapping[str, Any] | None) -> EmbedFn:
    """The L2-normalised embedding a run compares images with (module docstring).

    A Siamese run embeds with its projection head (``model(x)``, what its contrastive loss shaped); every other
    run with ``forward_features`` (its head is task-specific).

    Raises:
        ModelError: the model has no ``forward_features`` (not a zoo model).
    """
    if not hasattr(model, "forward_features"):
        raise ModelError(f"{type(model).__name__} has no forward_features(); embeddings need a zoo model.")
    if is_siamese(meta):
        return lambda x: l2_embed(model, x)
    features: Any = model.forward_features
    return lambda x: l2_embed(features, x)


def score_pair(model: nn.Module, meta: Mapping[str, Any] | None, x: torch.Tensor) -> dict[str, Any]:
    """``cxr similarity``'s numbers for the two model inputs ``x[0]`` and ``x[1]``: ``similarity`` in [0, 1],
    ``distance`` of ``distance_kind`` (the run's trained distance, else cosine) and which ``embedding`` was used.
    Each image is embedded on its own: no batch effects at all."""
    embed = embedder(model, meta)
    siamese = trained_distance(meta)
    kind = siamese or "cosine"
    with torch.inference_mode():
        za, zb = embed(x[:1]).float(), embed(x[1:2]).float()
        d = float(pair_distance(za, zb, kind)[0])
        s = float(similarity(za, zb, kind)[0])
    embedding = "siamese projection" if siamese else "backbone features"
    return {"similarity": s, "distance": d, "distance_kind": kind, "embedding": embedding}
