"""Siamese network: a zoo backbone, a linear projection to the embedding size, L2 normalisation.

Design choice: the projection *is* the zoo model's linear head. ``create_siamese("resnet18", 256)`` builds
``create_model("resnet18", num_classes=256)``, whose ``forward_features`` is the backbone and whose ``head``
is the ``Linear(num_features, 256)`` projection; :class:`SiameseNet` only adds the L2 normalisation. So the
weights a Siamese run saves are an ordinary zoo model folder (:func:`save_model_dir` / :func:`load_model_dir`
work unchanged, training kind ``siamese``), and a MAML or fine-tune run can start from the backbone with
``reset_head``. :func:`load_siamese` turns such a folder back into a :class:`SiameseNet`.

Distances on the unit sphere (embeddings are L2-normalised, so both lie in [0, 2]):

* ``cosine``: ``d = 1 - <a, b>``;
* ``euclidean``: ``d = ||a - b||_2`` (``d² = 2 - 2 <a, b>``).

:func:`similarity` maps either to ``1 - d / 2`` in [0, 1] (1 = same direction), a score whose order is the
distance's reversed order, which pair AUC and thresholds use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cxr_tools.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from cxr_tools.models.backbones import Classifier

DISTANCES: tuple[str, ...] = ("cosine", "euclidean")
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
        return F.normalize(self.backbone(x).float(), dim=1)

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


def create_siamese(backbone: str, embedding_dim: int = 256, distance: str = "cosine", **overrides: Any) -> SiameseNet:
    """A :class:`SiameseNet` on zoo model ``backbone`` (``overrides`` go to :func:`create_model`)."""
    from cxr_tools.models.registry import create_model

    if embedding_dim < 1:
        raise ConfigError(f"--embedding-dim must be at least 1 (got {embedding_dim}).")
    overrides.pop("num_classes", None)
    return SiameseNet(create_model(backbone, num_classes=int(embedding_dim), **overrides), distance)


def load_siamese(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[SiameseNet, dict]:
    """Load the model folder of a ``cxr train-siamese`` run (or its run directory) as a :class:`SiameseNet`."""
    from cxr_tools.models.checkpoints import load_model_dir

    model, meta = load_model_dir(path, map_location)
    if meta.get("training") != "siamese":
        raise ModelError(
            f"{meta.get('path', path)} holds a '{meta.get('training')}' model, not a Siamese one.",
            "Pass the run directory of `cxr train-siamese`.",
        )
    distance = str((meta.get("extra") or {}).get("distance", "cosine"))
    net = SiameseNet(model, distance).to(map_location)  # type: ignore[arg-type]
    net.eval()
    return net, meta
