"""Pretrained weights from weight files the tests write: torchvision ImageNet (RGB stem folded) and
TorchXRayVision (a pickled module read without running its code)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cxr_tools.errors import ModelError
from cxr_tools.models import create_model
from cxr_tools.models.pretrained import (
    IMAGENET_DENSENET121,
    IMAGENET_RESNET18,
    IMAGENET_RESNET50,
    XRV_FILE,
    fold_input_conv,
    read_state_dict,
    torchvision_weights_url,
)

torch.set_num_threads(1)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    return ckpt


def _randomise_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


def _grey(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("arch", "source"),
    [("resnet18", IMAGENET_RESNET18), ("resnet50", IMAGENET_RESNET50), ("densenet121", IMAGENET_DENSENET121)],
)
def test_file_names_are_the_ones_torchvision_caches(arch, source):
    assert Path(torchvision_weights_url(arch)).name == source.file_name


def test_fold_sums_over_input_channels():
    w = torch.randn(4, 3, 3, 3)
    folded = fold_input_conv(w)
    assert folded.shape == (4, 1, 3, 3)
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(
        nn.functional.conv2d(x, folded), nn.functional.conv2d(x.repeat(1, 3, 1, 1), w), atol=1e-5, rtol=1e-5
    )


def test_imagenet_resnet18_grey_model_equals_rgb_model_on_repeated_input(torch_home):
    rgb = torchvision.models.resnet18(weights=None)
    _randomise_bn(rgb, 1)
    torch.save(rgb.state_dict(), torch_home / IMAGENET_RESNET18.file_name)
    grey = create_model("resnet18", weights="imagenet", num_classes=0).eval()
    rgb.fc = nn.Identity()
    rgb.eval()
    x = _grey()
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
    assert grey.pretrained == "imagenet" and grey.normalisation == "imagenet"


def test_imagenet_densenet121_with_legacy_keys(torch_home):
    rgb = torchvision.models.densenet121(weights=None)
    _randomise_bn(rgb, 2)
    legacy = {}
    for key, value in rgb.state_dict().items():  # torchvision's 2017 file: old 'norm.1' keys, no batch counters
        if key.endswith("num_batches_tracked"):
            continue
        for old in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            if "denselayer" in key and f".{old}." in key:
                key = key.replace(f".{old}.", f".{old[:-1]}.{old[-1]}.")
        legacy[key] = value
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, torch_home / IMAGENET_DENSENET121.file_name)
    grey = create_model("densenet121", weights="imagenet", num_classes=5).eval()
    rgb.eval()
    x = _grey()
    with torch.no_grad():
        ref = torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(rgb.features(x.repeat(1, 3, 1, 1))), 1), 1)
        torch.testing.assert_close(grey.forward_features(x), ref, atol=1e-4, rtol=1e-4)
    assert grey(x).shape == (2, 5)


def test_missing_imagenet_file_offline_says_where_to_put_it(torch_home):
    with pytest.raises(ModelError) as err:
        create_model("resnet18", weights="imagenet")
    msg = str(err.value)
    assert str(torch_home / IMAGENET_RESNET18.file_name) in msg and "download.pytorch.org" in msg


def test_weights_of_another_architecture_are_refused(torch_home):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), torch_home / IMAGENET_RESNET50.file_name)
    with pytest.raises(ModelError, match="do not fit"):
        create_model("resnet50", weights="imagenet")


def test_pretrained_requires_batchnorm(torch_home):
    with pytest.raises(ModelError, match="BatchNorm"):
        create_model("resnet18", weights="imagenet", norm="group")


class _Trap:
    """Pickles as a call to os.mkdir: a loader that runs pickled code would create the directory."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def _write_xrv_file(path: Path, trap: Path, monkeypatch) -> nn.Module:
    """A DenseNet-121 pickled as a whole module under TorchXRayVision's class name, as xrv ships it."""
    pkg = types.ModuleType("torchxrayvision")
    mod = types.ModuleType("torchxrayvision.models")

    class DenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tv = torchvision.models.densenet121(weights=None)
            tv.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.features = tv.features
            self.classifier = nn.Linear(1024, 18)
            self.pathologies = ["Atelectasis"] * 18
            self.trap = _Trap(trap)

    DenseNet.__module__ = "torchxrayvision.models"
    DenseNet.__qualname__ = "DenseNet"
    mod.DenseNet = DenseNet
    monkeypatch.setitem(sys.modules, "torchxrayvision", pkg)
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", mod)
    model = DenseNet()
    _randomise_bn(model, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    monkeypatch.delitem(sys.modules, "torchxrayvision.models")
    monkeypatch.delitem(sys.modules, "torchxrayvision")
    return model.eval()


def test_xrv_pickled_module_loads_without_running_code(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    weights = Path(os.environ["CXR_HOME"]) / "weights" / XRV_FILE
    trap = tmp_path / "code-was-run"
    reference = _write_xrv_file(weights, trap, monkeypatch)
    with pytest.raises(Exception):  # noqa: B017 - the file really is not a plain state dict
        torch.load(weights, weights_only=True)
    state = read_state_dict(weights)
    assert not trap.exists()
    assert "classifier.weight" in state and "features.norm5.running_var" in state

    model = create_model("densenet121", weights="xrv", num_classes=18).eval()
    assert not trap.exists()
    assert model.normalisation == "xrv" and model.pretrained == "xrv"
    x = _grey() * 2048 - 1024
    with torch.no_grad():
        feats = torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(reference.features(x)), 1), 1)
        torch.testing.assert_close(model(x), reference.classifier(feats), atol=1e-4, rtol=1e-4)
    other = create_model("densenet121", weights="xrv", num_classes=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(other.forward_features(x), feats, atol=1e-4, rtol=1e-4)


def test_missing_xrv_file_offline_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(ModelError) as err:
        create_model("densenet121", weights="xrv")
    msg = str(err.value)
    assert str(Path(os.environ["CXR_HOME"]) / "weights" / XRV_FILE) in msg
    assert "github.com/mlmed/torchxrayvision" in msg


def test_garbage_weight_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="Cannot read weights"):
        read_state_dict(bad)
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(ModelError, match="no state dict"):
        read_state_dict(tmp_path / "nostate.pt")


def test_single_dataset_xrv_weights_load_from_their_upstream_file_names(monkeypatch, tmp_path):
    from weight_files import write_xrv_weights

    from cxr_tools.models import model_card

    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    card = model_card("densenet121")
    assert card.weight_source("xrv-rsna").file_name.startswith("kaggle-densenet121-")  # TorchXRayVision's name
    source = card.weight_source("xrv-chex")
    assert source.file_name == "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    path = write_xrv_weights(source.file_name)
    model = create_model("densenet121", weights="xrv-chex", num_classes=18)
    assert model.pretrained == "xrv-chex" and model.normalisation == "xrv"
    torch.testing.assert_close(model.head.weight, read_state_dict(path)["classifier.weight"])
    with pytest.raises(ModelError, match="not cached"):
        create_model("densenet121", weights="xrv-nih")  # another file, not written
