"""Backbones: every model is a feature extractor plus one linear head.

All models share one interface (:class:`Classifier`): ``forward_features(x) -> [B, D]`` gives the embedding
(Siamese networks, prototypes), ``head`` maps it to logits, ``num_classes=0`` replaces the head by an identity
so ``forward`` returns features, and ``reset_head(n)`` swaps in a fresh head (fine-tuning, MAML on a new
episode). Inputs are one grey channel; global average pooling makes any image size work (the seeds'
DenseNet head was sized for one input size only).

Normalisation layers and batch independence (docs/science.md). A query image's score must not depend on the
other images in its batch. BatchNorm uses batch statistics in train mode, so:

* ``conv4`` defaults to GroupNorm: MAML adapts in train mode on tiny support sets and evaluates queries
  right after; with BatchNorm the query batch's statistics would leak between queries (and a perfectly
  balanced query batch inflates scores). GroupNorm normalises each sample on its own, in both modes. Its
  convolutions are weight standardised (:class:`StdConv2d`), without which most of its ReLUs die.
* ``simple-cnn`` and the torchvision ResNets default to BatchNorm (the seeds' choice, and what pretrained
  weights were trained with); DenseNet always has it. In eval mode BatchNorm uses running statistics and is
  per-sample. Score them in eval mode, and adapt them with :func:`freeze_batchnorm` applied after
  ``model.train()`` so support-set statistics never leak into queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

NORMS = ("batch", "group", "instance", "none")


def _group_count(channels: int, max_groups: int = 8) -> int:
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer of ``kind`` (see :data:`NORMS`) for ``channels`` channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(_group_count(channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {kind!r}")


class StdConv2d(nn.Conv2d):
    """A Conv2d whose kernels are standardised (zero mean, unit variance per output channel) in every forward.

    Weight standardisation (Qiao et al. 2019; BiT) is GroupNorm's companion. Without it a bias-free conv on
    non-negative inputs (pixels, ReLU outputs) gives each channel an offset set by its kernel's sum, the
    same in every image; GroupNorm centres the group, not the channel, so channels with a low offset sit
    below zero everywhere and their ReLU dies. Measured on the 48 px demo phantoms (conv4, AdamW lr 3e-3):
    40 of 64 last-block channels dead after one epoch and held-out mean AUC 0.53 after five; with standardised
    kernels 0.68 after five, 0.80 after eight. Per-sample like GroupNorm, so batch independence is kept;
    parameter names match ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self._conv_forward(x, (w - mean) / torch.sqrt(var + 1e-5), self.bias)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose forward without autograd is two element-wise maxima of strided views.

    PyTorch's CPU max-pool kernel is slow for a 2×2 window: several times slower than ``torch.maximum`` of the
    even and odd rows, then columns (``benchmarks/maml_engines.py --pooling``; docs/benchmarks.md). The values
    are the same (a maximum is exact, and NaN propagates alike), so scoring, embedding and
    evaluation get the fast path. With autograd on, the native kernel is kept: its backward sends each window's
    gradient to the first maximum, and an exact re-implementation of that routing on strided views measured no
    faster. Odd sizes drop the last row / column, as ``nn.MaxPool2d(2)`` does.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dim() < 3:
            return super().forward(x)
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :height, :width]
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class Classifier(nn.Module):
    """Base of every zoo model: ``forward(x) = head(forward_features(x))``.

    Subclasses set ``self.num_features`` and implement :meth:`forward_features`.
    """

    in_chans: int = 1
    num_features: int
    num_classes: int
    norm: str
    # Set by create_model / load_model_dir: how to rebuild the model and what input it expects.
    model_name: str | None = None
    model_args: dict[str, Any]
    pretrained: str | None = None
    normalisation: str = "unit"
    image_size: int = 224

    def _init_head(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_head(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0 = identity)."""
        device = next(self.parameters()).device
        self._init_head(num_classes)
        self.head.to(device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding ``[B, num_features]`` of images ``[B, 1, H, W]``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def train(self, mode: bool = True) -> Classifier:
        """``nn.Module.train``; a model whose features are frozen (:func:`freeze_features`) keeps every layer but
        the head in eval mode, so dropout and BatchNorm statistics never change the frozen features."""
        super().train(mode)
        if getattr(self, "features_frozen", False):
            for name, child in self.named_children():
                if name != "head":
                    child.eval()
        return self


class ConvNet(Classifier):
    """Stacked blocks of [conv3x3, norm, ReLU, maxpool2] then global average pooling.

    With ``widths=(64, 64, 64, 64)`` this is the standard MAML / ProtoNet "Conv-4" backbone (Finn et al.
    2017; Vinyals et al. 2016), except that global average pooling replaces the flatten so that any image size
    works and the embedding size is the last width. With ``norm="group"`` and several channels per group
    the convolutions are weight standardised (:class:`StdConv2d`).
    """

    def __init__(
        self,
        widths: Sequence[int],
        num_classes: int = 1,
        norm: str = "group",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ValueError("widths must be positive channel counts")
        self.norm = norm
        layers: list[nn.Module] = []
        cin = self.in_chans
        for w in widths:
            # A GroupNorm group of several channels needs standardised kernels to keep its ReLUs alive (see
            # StdConv2d); one channel per group centres each channel itself.
            conv = StdConv2d if norm == "group" and _group_count(w) < w else nn.Conv2d
            layers += [
                conv(cin, w, 3, padding=1, bias=norm == "none"),
                norm_layer(norm, w),
                nn.ReLU(inplace=True),
                MaxPool2x2(),
            ]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.num_features = cin
        self._init_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.flatten(self.pool(self.features(x)), 1))


class TorchvisionResNet(Classifier):
    """A torchvision ResNet with a one-channel stem; module names match torchvision's (``conv1``,
    ``layer1``..), so torchvision state dicts load after the RGB stem is folded (see pretrained.py)."""

    conv1: nn.Module
    bn1: nn.Module
    relu: nn.Module
    maxpool: nn.Module
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    avgpool: nn.Module

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        num_classes: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        from torchvision.models import resnet as tvr

        if norm not in ("batch", "group"):
            raise ValueError("ResNet norm must be 'batch' or 'group'")
        block_cls = {"basic": tvr.BasicBlock, "bottleneck": tvr.Bottleneck}[block]
        norm_fn: Callable[[int], nn.Module] = (lambda c: norm_layer(norm, c)) if norm != "batch" else nn.BatchNorm2d
        net = tvr.ResNet(block_cls, list(layers), norm_layer=norm_fn)
        net.conv1 = nn.Conv2d(self.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.norm = norm
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, name, getattr(net, name))
        self.num_features = int(net.fc.in_features)
        self._init_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class TorchvisionDenseNet(Classifier):
    """A torchvision DenseNet with a one-channel stem; ``features.*`` names match torchvision and
    TorchXRayVision. The head is sized from the final feature count (1024 for DenseNet-121) after global
    pooling, so it is right for every input size."""

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        num_classes: int = 1,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        from torchvision.models import densenet as tvd

        net = tvd.DenseNet(
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            num_init_features=num_init_features,
            drop_rate=drop_rate,
        )
        conv0 = nn.Conv2d(self.in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv0.weight)
        net.features.conv0 = conv0
        self.norm = "batch"
        self.features = net.features
        self.num_features = int(net.classifier.in_features)
        self._init_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.features(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains a BatchNorm layer (its train-mode outputs depend on batch-mates)."""
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


def freeze_batchnorm(model: nn.Module, freeze_affine: bool = False) -> nn.Module:
    """Put every BatchNorm layer in eval mode (running statistics, per-sample), leaving the rest as is.

    Call it after ``model.train()`` when adapting on a support set, so the support batch's statistics
    neither leak into query scores nor overwrite the running statistics. ``freeze_affine`` also stops the
    BatchNorm scale and shift from being trained. Returns ``model`` for chaining.
    """
    for m in model.modules():
        if isinstance(m, _BN_TYPES):
            m.eval()
            if freeze_affine:
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
    return model


set_bn_eval = freeze_batchnorm


def freeze_features(model: nn.Module) -> nn.Module:
    """Train ``model``'s head only (``cxr train --freeze``): every other weight stops learning and stays in eval
    mode (:meth:`Classifier.train`). A foundation encoder also saves only its head (it reloads from its source)."""
    freeze = getattr(model, "freeze_encoder", None)
    if callable(freeze):
        freeze()
        return model
    for name, p in model.named_parameters():
        if not name.startswith("head."):
            p.requires_grad_(False)
    model.features_frozen = True  # type: ignore[assignment]
    return model.train(model.training)
