"""Engine of ``cxr similarity A B``: how alike two images are under a run's embedding.

The embedding is the run's one embedding (:func:`~cxr_tools.models.siamese.embedder`): a Siamese run's
L2-normalised projection, compared with the distance it was trained with (``extra.distance`` in ``model.json``:
cosine or euclidean); any other run (MAML, supervised) the L2-normalised pooled backbone features, compared by
cosine. The score is :func:`~cxr_tools.models.siamese.similarity`, ``1 - d / 2`` in [0, 1] (1 = same
direction), for both distances, so it is symmetric and an image is maximally similar to itself. Both images are
preprocessed with the run's recorded operations (:func:`~cxr_tools.data.decoding.for_model.model_ops`) and
embedded one at a time in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_tools.data.decoding.for_model import model_ops
from cxr_tools.data.decoding.imaging import load_image
from cxr_tools.models import load_model_dir
from cxr_tools.models.inputs import to_model_input
from cxr_tools.models.siamese import score_pair
from cxr_tools.runtime.devices import resolve_device


@dataclass(frozen=True)
class SimilarityConfig:
    """Settings of ``cxr similarity``.

    Attributes:
        a, b: the two image files (PNG, JPEG, DICOM...).
        model: a run directory or model folder.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        plot: write a side-by-side PNG of the two preprocessed images here.
    """

    a: Path
    b: Path
    model: Path
    device: str = "auto"
    plot: Path | None = None


@dataclass(frozen=True)
class SimilarityResult:
    """The score of one pair: ``similarity`` in [0, 1] and the ``distance`` (of kind ``distance_kind``)."""

    a: str
    b: str
    model: str
    training: str
    embedding: str
    distance_kind: str
    distance: float
    similarity: float
    plot: Path | None


def run_similarity(config: SimilarityConfig) -> SimilarityResult:
    """Embed both images and compare them (module docstring).

    Raises:
        ImageDecodeError: an image cannot be read (an :class:`~cxr_tools.errors.InputError`).
        ModelError: the model folder is missing or broken.
    """

    device = resolve_device(config.device)
    model, meta = load_model_dir(config.model, map_location=device)
    model.eval()
    ops = model_ops(meta)
    images = np.stack([load_image(config.a, ops), load_image(config.b, ops)])
    scored = score_pair(model, meta, to_model_input(images, meta, device))
    s, d, kind = scored["similarity"], scored["distance"], scored["distance_kind"]
    plot = None
    if config.plot is not None:
        from cxr_tools.eval.plots import plot_image_pair

        title = f"similarity {s:.4f} ({kind} distance {d:.4f}, {meta.get('training')} run)"
        names = (Path(config.a).name, Path(config.b).name)
        plot = plot_image_pair(config.plot, images[0], images[1], names=names, title=title)
    return SimilarityResult(
        a=str(config.a),
        b=str(config.b),
        model=str(meta.get("path")),
        training=str(meta.get("training")),
        embedding=scored["embedding"],
        distance_kind=kind,
        distance=d,
        similarity=s,
        plot=plot,
    )
