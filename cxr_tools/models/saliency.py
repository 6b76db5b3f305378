"""Grad-CAM saliency: where in the image a run's finding score comes from, as a heat map over the X-ray.

Grad-CAM (Selvaraju et al. 2017) weights the channels of a late convolutional layer by the spatially averaged
gradient of one class's logit and keeps the positive part of their sum: a coarse map of the regions that raise
that score. The computation is Captum's :class:`~captum.attr.LayerGradCam` (a maintained implementation; the
``grad-cam`` package needs the GUI build of OpenCV, which conflicts with the headless one this project uses).

* **Which layer** (:func:`target_layer`, the one place that decides it): the last feature map before global
  pooling, per zoo family: conv4 / simple-cnn the last block's ReLU (before its max-pool, so at twice the
  resolution), ResNet ``layer4``, DenseNet the final ``features`` (after ``norm5``); a foundation encoder (a
  vision transformer) its patch embedding, the one spatial map it has, weighted by gradients that pass through
  every attention layer (the map covers the encoder's centre crop, stretched over the image). A Siamese
  wrapper's backbone is explained the same way.
* **Independent findings**: each class's map comes from its own logit (the sigmoid's input), never from a
  softmax across findings, so two co-occurring findings each get their own map.
* **Batch independence**: the model runs in eval mode (BatchNorm on running statistics), so an image's map
  depends on that image only.

``cxr predict --cam DIR`` and the ``cxr app`` Classify tab both call :func:`saliency_maps` and
:func:`overlay` / :func:`write_overlays`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.runtime.outputs import OutputDecision, OutputSpec, claim, decide

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Overlays are upscaled to at least this side (cache images are 32-256 px) so the map is visible.
OVERLAY_MIN_SIDE = 256
#: Weight of the heat map in the overlay (the rest is the X-ray).
OVERLAY_ALPHA = 0.45


def target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM explains for a zoo model (module docstring); a :class:`ModelError` for other models."""
    from torch import nn

    from cxr_tools.models.backbones import ConvNet, TorchvisionDenseNet, TorchvisionResNet

    net: Any = getattr(model, "backbone", model)  # a Siamese wrapper
    if isinstance(net, ConvNet):
        # In-place ReLUs: hook the last one itself (its output is not modified afterwards; max-pool copies).
        relus = [m for m in net.features if isinstance(m, nn.ReLU)]
        return relus[-1]
    if isinstance(net, TorchvisionResNet):
        return net.layer4
    if isinstance(net, TorchvisionDenseNet):
        return net.features
    from cxr_tools.models.foundation import FoundationEncoder

    if isinstance(net, FoundationEncoder):
        # A vision transformer has one feature map: its patch embedding (the last conv); the gradient reaches it
        # through every attention layer, so the map shows the patches that raise the finding's logit.
        convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            return convs[-1]
    raise ModelError(
        f"No Grad-CAM layer is known for {type(net).__name__}.", "Use a zoo model (see `cxr models`) for saliency."
    )


def saliency_maps(model: nn.Module, x: torch.Tensor, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of ``classes`` for images ``x`` ``[n, 1, H, W]`` (already in the model's input range).

    Returns:
        ``(maps, probs)``: maps float32 ``[n, len(classes), H, W]`` scaled to [0, 1] per image and class (all
        zeros where no region raises the logit), and the sigmoid probabilities float32 ``[n, num_classes]`` of
        the same forward pass.
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    n_out = int(getattr(model, "num_classes", 0) or 0)
    bad = [c for c in classes if not 0 <= int(c) < n_out]
    if bad:
        raise ModelError(f"Class index {bad[0]} is outside the model's {n_out} outputs.")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            cam = LayerGradCam(model, target_layer(model))
            maps = []
            for c in classes:
                attr = cam.attribute(x, target=int(c), relu_attributions=True)
                attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")
                maps.append(attr.detach()[:, 0])
            with torch.no_grad():
                probs = torch.sigmoid(model(x).float()).cpu().numpy()
    finally:
        model.train(was_training)
    if not maps:
        return np.zeros((len(x), 0, *x.shape[-2:]), np.float32), probs
    stacked = torch.stack(maps, dim=1).float().clamp_min(0).cpu().numpy()
    peak = stacked.max(axis=(2, 3), keepdims=True)
    scaled = np.divide(stacked, peak, out=np.zeros_like(stacked), where=peak > 0)
    return scaled.astype(np.float32), probs.astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, *, min_side: int = OVERLAY_MIN_SIDE) -> np.ndarray:
    """The X-ray ``image`` (uint8 ``[H, W]``) with ``cam`` (``[H, W]`` in [0, 1]) as a JET heat map over it:
    RGB uint8, upscaled so the shorter side is at least ``min_side``."""
    import cv2

    h, w = image.shape
    scale = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    size = (w * scale, h * scale)
    gray = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    heat = cv2.resize(np.clip(cam, 0.0, 1.0).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    mixed = cv2.addWeighted(colour, OVERLAY_ALPHA, base, 1.0 - OVERLAY_ALPHA, 0.0)
    return cv2.cvtColor(mixed, cv2.COLOR_BGR2RGB)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 image."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 array
        raise ModelError("Could not encode the saliency overlay as PNG.")
    return buf.tobytes()


def cam_classes(labels: Sequence[str], requested: str | Sequence[str] | None) -> list[str] | None:
    """The findings named by ``--cam-classes`` (``A,B`` or a list), checked against ``labels``; None = above
    threshold."""
    if requested is None:
        return None
    names = [s.strip() for s in requested.split(",")] if isinstance(requested, str) else list(requested)
    names = [s for s in names if s]
    unknown = [s for s in names if s not in labels]
    if unknown:
        raise ConfigError(
            f"--cam-classes names '{unknown[0]}', which is not predicted.", f"Labels: {', '.join(labels)}."
        )
    if not names:
        raise ConfigError("--cam-classes is empty.", "Name findings, e.g. --cam-classes Effusion,Mass.")
    return names


def chosen(
    probs: np.ndarray, labels: Sequence[str], thresholds: Mapping[str, float] | None, classes: Sequence[str] | None
) -> list[list[int]]:
    """Per image, the class indices to explain: ``classes`` if given, else every finding at or above its
    threshold (0.5 for a finding without one)."""
    if classes is not None:
        idx = [labels.index(c) for c in classes]
        return [idx for _ in range(len(probs))]
    cut = np.array([float((thresholds or {}).get(label, 0.5)) for label in labels], dtype=np.float32)
    return [[int(j) for j in np.flatnonzero(row >= cut)] for row in probs]


def file_name(index: int, source: str, label: str) -> str:
    """``00012_<source stem>_<label>.png``: the input's position keeps names unique; odd characters become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9.-]+", "_", Path(source).stem).strip("_") or "image"
    return f"{index:05d}_{stem}_{re.sub(r'[^A-Za-z0-9.-]+', '_', label).strip('_')}.png"


#: The folder of ``cxr predict --cam``: every overlay is recorded in its marker as it is written; an earlier one
#: (any, even of other inputs) is replaced only with ``--overwrite``, which removes only the recorded overlays.
CAM_SPEC = OutputSpec(command="predict --cam", what="saliency folder", complete=lambda p: True)


class CamFolder:
    """The folder of ``cxr predict --cam``: one overlay PNG per image and explained finding (:func:`chosen`),
    each written atomically (:data:`CAM_SPEC`)."""

    def __init__(self, decision: OutputDecision, labels: Sequence[str], classes: Sequence[str] | None) -> None:
        self.folder = decision.path
        self.labels = list(labels)
        self.classes = classes
        self._decision: OutputDecision | None = decision
        self.written = 0

    @classmethod
    def plan(cls, folder: Path, labels: Sequence[str], requested: str | None, *, overwrite: bool) -> CamFolder:
        """Check the folder and ``--cam-classes`` before any scoring (nothing is written yet)."""
        decision = decide(folder, CAM_SPEC, overwrite=overwrite)
        return cls(decision, labels, cam_classes(labels, requested))

    def write(
        self,
        model: nn.Module,
        meta: Mapping[str, Any],
        images: np.ndarray,
        start: int,
        rejected: Sequence[tuple[int, str]],
        items: Sequence[Any],
        thresholds: Mapping[str, float] | None,
    ) -> int:
        """Overlays of one decoded chunk (:func:`~cxr_tools.data.decoding.for_model.decode_stream`'s ``start, images,
        rejected``) of ``items`` (inputs with a ``display`` name); returns the files written."""
        if self._decision is not None:
            claim(self._decision)
            self._decision = None
        bad = {pos for pos, _ in rejected}
        positions = [p for p in range(start, start + len(images) + len(bad)) if p not in bad][: len(images)]
        names = [str(items[p].display) for p in positions]
        n = write_overlays(self.folder, model, meta, images, positions, names, self.labels, thresholds, self.classes)
        self.written += n
        return n


def write_overlays(
    folder: Path,
    model: nn.Module,
    meta: Mapping[str, Any],
    images: np.ndarray,
    positions: Sequence[int],
    sources: Sequence[str],
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None,
    classes: Sequence[str] | None,
) -> int:
    """Write a Grad-CAM overlay PNG per image of ``images`` (uint8 ``[n, H, W]``, the model's preprocessing) and
    per finding it is explained for (:func:`chosen`) into ``folder``, atomically. ``positions`` are the inputs'
    places in the whole input list and ``sources`` their paths (for the names). Returns the files written."""
    import torch

    from cxr_tools.models.inputs import to_model_input
    from cxr_tools.runtime.fs import atomic_write_bytes

    if len(images) == 0:
        return 0
    device = next(model.parameters()).device
    x = to_model_input(images, meta, device)
    if classes is None:  # explain only what is above threshold: one forward first, then one backward per finding
        with torch.no_grad():
            probs = torch.sigmoid(model.eval()(x).float()).cpu().numpy()
        picked = chosen(probs, labels, thresholds, None)
        wanted = sorted({j for row in picked for j in row})
    else:
        picked = chosen(np.zeros((len(images), len(labels))), labels, thresholds, classes)
        wanted = [labels.index(c) for c in classes]
    maps, _ = saliency_maps(model, x, wanted)
    slot = {j: k for k, j in enumerate(wanted)}
    written = 0
    for i, row in enumerate(picked):
        for j in row:
            name = file_name(int(positions[i]), sources[i], labels[j])
            atomic_write_bytes(folder / name, png_bytes(overlay(images[i], maps[i, slot[j]])))
            written += 1
    return written
