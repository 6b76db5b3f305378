"""Pretrained weight files in their upstream formats, written by the tests (nothing is downloaded).

Import as ``from weight_files import write_torchvision_weights, write_xrv_weights`` (``tests/`` is on pytest's
``pythonpath``).

* torchvision: the architecture's ``state_dict`` saved with ``torch.save`` under the file name torchvision's
  weight enum gives (``resnet18-f37072fd.pth``), in ``$TORCH_HOME/hub/checkpoints``, where torch.hub caches it.
* TorchXRayVision: the whole DenseNet-121 pickled as ``torchxrayvision.models.DenseNet`` (as its release files
  are), with the 18-finding classifier, ``pathologies`` and the ``op_threshs`` buffer, in ``$CXR_HOME/weights``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn

XRV_TARGETS = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)


@contextlib.contextmanager
def _fake_torchxrayvision() -> Iterator[type[nn.Module]]:
    """A ``torchxrayvision.models`` module holding a ``DenseNet`` class, importable only while the block runs
    (pickle records the class by module and name; the real package is not installed)."""
    pkg = types.ModuleType("torchxrayvision")
    mod = types.ModuleType("torchxrayvision.models")

    class DenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tv = torchvision.models.densenet121(weights=None)
            tv.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.features = tv.features
            self.classifier = nn.Linear(1024, len(XRV_TARGETS))
            self.pathologies = list(XRV_TARGETS)
            self.register_buffer("op_threshs", torch.full((len(XRV_TARGETS),), 0.5))

    DenseNet.__module__ = "torchxrayvision.models"
    DenseNet.__qualname__ = "DenseNet"
    mod.DenseNet = DenseNet
    pkg.models = mod
    saved = {k: sys.modules.get(k) for k in ("torchxrayvision", "torchxrayvision.models")}
    sys.modules.update({"torchxrayvision": pkg, "torchxrayvision.models": mod})
    try:
        yield DenseNet
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def write_xrv_weights(file_name: str) -> Path:
    """A TorchXRayVision DenseNet-121 release file ``$CXR_HOME/weights/file_name``; returns its path."""
    path = Path(os.environ["CXR_HOME"]) / "weights" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    with _fake_torchxrayvision() as densenet:
        torch.manual_seed(0)
        torch.save(densenet(), path)
    return path


def write_torchvision_weights(arch: str, file_name: str) -> Path:
    """torchvision's ``arch`` state dict as ``$TORCH_HOME/hub/checkpoints/file_name``; returns its path."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
    return path
