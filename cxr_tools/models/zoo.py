"""The registered models: one short recipe each (see registry.py for the mechanism, backbones.py for the
architectures and the choice of normalisation layers).

Every recipe takes ``num_classes`` (0 = no head, ``forward`` returns the embedding); ``norm`` where the
architecture allows a choice; ``weights`` where pretrained weights exist. ``*-tiny`` variants exist so the
test suite can exercise every family in milliseconds.
"""

from __future__ import annotations

from cxr_tools.models.backbones import Classifier, ConvNet, TorchvisionDenseNet, TorchvisionResNet
from cxr_tools.models.pretrained import (
    IMAGENET_DENSENET121,
    IMAGENET_RESNET18,
    IMAGENET_RESNET50,
    XRV_DENSENET121,
    XRV_SINGLE_DENSENET121,
    load_weights,
)
from cxr_tools.models.registry import register_model

_BN_NOTE = "BatchNorm: score in eval mode; call freeze_batchnorm(model) after model.train() when adapting."
_GN_NOTE = (
    "GroupNorm by default (per-sample, so a query's score never depends on its batch-mates even in train "
    "mode, as MAML adapts); norm=batch|instance|none available."
)


def _pretrained_needs_bn(norm: str, weights: str | None) -> None:
    if weights not in (None, "none") and norm != "batch":
        raise ValueError(f"pretrained weights were trained with BatchNorm; norm={norm!r} cannot load them")


@register_model("conv4", family="conv4", image_size=84, min_image_size=16, notes=f"MAML Conv-4, 64 ch. {_GN_NOTE}")
def conv4(num_classes: int = 1, hidden: int = 64, norm: str = "group", dropout: float = 0.0) -> Classifier:
    return ConvNet((hidden,) * 4, num_classes=num_classes, norm=norm, dropout=dropout)


@register_model("conv4-tiny", family="conv4", image_size=32, min_image_size=16, notes=f"Conv-4, 8 ch. {_GN_NOTE}")
def conv4_tiny(num_classes: int = 1, hidden: int = 8, norm: str = "group", dropout: float = 0.0) -> Classifier:
    return ConvNet((hidden,) * 4, num_classes=num_classes, norm=norm, dropout=dropout)


@register_model(
    "simple-cnn",
    family="simple-cnn",
    image_size=128,
    min_image_size=16,
    notes="The seeds' vanilla CNN: conv blocks 32-64-128-256, global pooling, dropout. " + _BN_NOTE,
)
def simple_cnn(num_classes: int = 1, norm: str = "batch", dropout: float = 0.25) -> Classifier:
    return ConvNet((32, 64, 128, 256), num_classes=num_classes, norm=norm, dropout=dropout)


@register_model(
    "resnet18", family="resnet", weights=(IMAGENET_RESNET18,), notes="torchvision ResNet-18, 1-ch stem. " + _BN_NOTE
)
def resnet18(num_classes: int = 1, norm: str = "batch", weights: str | None = None) -> Classifier:
    _pretrained_needs_bn(norm, weights)
    return load_weights(TorchvisionResNet("basic", (2, 2, 2, 2), num_classes, norm), "resnet18", weights)


@register_model(
    "resnet50", family="resnet", weights=(IMAGENET_RESNET50,), notes="torchvision ResNet-50, 1-ch stem. " + _BN_NOTE
)
def resnet50(num_classes: int = 1, norm: str = "batch", weights: str | None = None) -> Classifier:
    _pretrained_needs_bn(norm, weights)
    return load_weights(TorchvisionResNet("bottleneck", (3, 4, 6, 3), num_classes, norm), "resnet50", weights)


@register_model(
    "resnet-tiny",
    family="resnet",
    image_size=32,
    notes="torchvision ResNet with one BasicBlock per stage (tests). " + _BN_NOTE,
)
def resnet_tiny(num_classes: int = 1, norm: str = "batch") -> Classifier:
    return TorchvisionResNet("basic", (1, 1, 1, 1), num_classes, norm)


@register_model(
    "densenet121",
    family="densenet",
    weights=(IMAGENET_DENSENET121, XRV_DENSENET121, *XRV_SINGLE_DENSENET121),
    notes="torchvision DenseNet-121, 1-ch stem, head sized by global pooling (any input size). "
    "weights=xrv (and xrv-nih, xrv-chex ...) expect [-1024, 1024] input; with num_classes=18 its finding head is kept. "
    + _BN_NOTE,
)
def densenet121(num_classes: int = 1, drop_rate: float = 0.0, weights: str | None = None) -> Classifier:
    model = TorchvisionDenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, drop_rate=drop_rate)
    return load_weights(model, "densenet121", weights)


@register_model(
    "densenet-tiny",
    family="densenet",
    image_size=32,
    notes="torchvision DenseNet, growth 8, 2 layers per block (tests). " + _BN_NOTE,
)
def densenet_tiny(num_classes: int = 1) -> Classifier:
    return TorchvisionDenseNet(8, (2, 2, 2, 2), 16, num_classes=num_classes)
