"""Pretrained weights: torchvision ImageNet and TorchXRayVision, folded to one grey input channel.

Files are looked up where their own libraries cache them, under the same names, so a cache filled by
torchvision or TorchXRayVision is reused as is:

* ImageNet (torchvision): ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``), the URL and file
  name taken from torchvision's weight enums (``ResNet18_Weights.DEFAULT`` ...).
* TorchXRayVision DenseNet-121 ("all", and the single-dataset ``xrv-nih``, ``xrv-chex`` ...):
  ``$CXR_HOME/weights/<file>``, ``$TORCH_HOME/hub/checkpoints/<file>`` or
  ``~/.torchxrayvision/models_data/<file>``.

A missing file is downloaded unless ``CXR_OFFLINE=1`` (or the download fails); then a :class:`ModelError` says
which file to put where. The RGB stem of ImageNet weights is folded to one channel by summing over the input
channels (timm's ``adapt_input_conv``): a grey image ``x`` then gives exactly what the RGB model gives for
``x`` repeated three times.

TorchXRayVision publishes its weights as a whole pickled ``nn.Module``. Unpickling that normally imports and
runs code named in the file; :func:`read_state_dict` instead uses an unpickler that resolves only tensor
rebuild functions and a few containers, turns every other named global into an inert placeholder, and walks
the placeholders' ``_parameters`` / ``_buffers`` / ``_modules`` to recover the state dict. No code from the
file runs.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cxr_tools.errors import ModelError
from cxr_tools.models.datacards import XRV_SINGLE
from cxr_tools.models.registry import WeightSource
from cxr_tools.paths import cxr_home

log = logging.getLogger(__name__)
M = TypeVar("M", bound=nn.Module)

_TV = "https://download.pytorch.org/models/"
IMAGENET_RESNET18 = WeightSource(
    "imagenet", "torchvision ImageNet-1k (IMAGENET1K_V1)", "imagenet", 224, "resnet18-f37072fd.pth", _TV
)
IMAGENET_RESNET50 = WeightSource(
    "imagenet", "torchvision ImageNet-1k (IMAGENET1K_V2)", "imagenet", 224, "resnet50-11ad3fa6.pth", _TV
)
IMAGENET_DENSENET121 = WeightSource(
    "imagenet", "torchvision ImageNet-1k (IMAGENET1K_V1)", "imagenet", 224, "densenet121-a639ec97.pth", _TV
)
XRV_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
_XRV_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
XRV_DENSENET121 = WeightSource(
    "xrv",
    "TorchXRayVision densenet121-res224-all (NIH, PadChest, CheXpert, MIMIC-CXR, OpenI, RSNA; 18 findings)",
    "xrv",
    224,
    XRV_FILE,
    _XRV_URL,
)
# TorchXRayVision's single-dataset DenseNets: weight name -> the prefix of its release file (model_urls; RSNA's
# file is named after Kaggle). What each was trained on: cxr_tools/models/datacards.py.
_XRV_SINGLE_FILES = {
    "xrv-nih": "nih",
    "xrv-pc": "pc",
    "xrv-chex": "chex",
    "xrv-mimic_ch": "mimic_ch",
    "xrv-mimic_nb": "mimic_nb",
    "xrv-rsna": "kaggle",
}
XRV_SINGLE_DENSENET121 = tuple(
    WeightSource(
        name,
        f"TorchXRayVision {XRV_SINGLE[name][0]} ({XRV_SINGLE[name][1].dataset} only)",
        "xrv",
        224,
        f"{prefix}-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _XRV_URL,
    )
    for name, prefix in _XRV_SINGLE_FILES.items()
)
_XRV_SOURCES = {s.name: s for s in (XRV_DENSENET121, *XRV_SINGLE_DENSENET121)}
# torchvision enum holding each architecture's ImageNet weights (the DEFAULT member is used).
_TV_ENUMS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "densenet121": "DenseNet121_Weights"}


def offline() -> bool:
    """Whether downloads are disabled (``CXR_OFFLINE=1``)."""
    return os.environ.get("CXR_OFFLINE", "").lower() in {"1", "true", "yes"}


def torchvision_weights_url(arch: str) -> str:
    """The URL of torchvision's DEFAULT ImageNet weights for ``arch`` (from its weight enum)."""
    import torchvision.models as tvm

    return str(getattr(tvm, _TV_ENUMS[arch]).DEFAULT.url)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def xrv_search_paths(file_name: str = XRV_FILE) -> list[Path]:
    """Where TorchXRayVision weights are looked for, in order."""
    return [
        cxr_home() / "weights" / file_name,
        _hub_checkpoints() / file_name,
        Path("~/.torchxrayvision/models_data").expanduser() / file_name,
    ]


def _fetch(url: str, candidates: list[Path], what: str) -> Path:
    """The first existing candidate, else a download into ``candidates[0]``; a clear error if neither works."""
    for path in candidates:
        if path.is_file():
            return path
    target = candidates[0]
    where = " or ".join(str(p) for p in candidates)
    hint = f"Download {url} on a machine with internet and copy it to {target} (also looked in: {where})."
    if offline():
        raise ModelError(f"The {what} weights are not cached and CXR_OFFLINE is set.", hint)
    log.info("downloading %s weights from %s to %s", what, url, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    hash_match = re.search(r"-([a-f0-9]{8,})\.", target.name)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_match.group(1) if hash_match else None, progress=False)
    except Exception as exc:  # network errors come as URLError, OSError, RuntimeError (hash) ...
        raise ModelError(f"Could not download the {what} weights: {exc}.", hint) from exc
    return target


class _Inert:
    """Placeholder for any global named in a pickle: constructing or 'calling' it runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    import torch._utils as tu

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch.nn.parameter", "Parameter"): nn.Parameter,
        ("torch", "Tensor"): torch.Tensor,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "object"): object,
    }
    for name in ("_rebuild_parameter_with_state", "_rebuild_tensor"):
        if hasattr(tu, name):
            allowed[("torch._utils", name)] = getattr(tu, name)
    return allowed


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Inert,), {"__module__": "cxr_tools.inert." + module})


class _InertPickleModule:
    """The ``pickle_module`` handed to ``torch.load``: only :class:`_InertUnpickler`."""

    Unpickler = _InertUnpickler

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return _InertUnpickler(f, **kwargs).load()


def _module_state(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value.detach()
    for key, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_state(child, f"{prefix}{key}.", out)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a weight file holding a state dict, a ``{"state_dict": ...}`` wrapper or a pickled module.

    Plain state dicts load with ``torch.load(weights_only=True)``; a pickled ``nn.Module`` (TorchXRayVision's
    format) is read with an inert unpickler (see the module docstring) without running code from the file.
    """
    path = Path(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule)
        except Exception as exc:
            raise ModelError(f"Cannot read weights from {path}: {exc}.", "Is the file complete?") from exc
    except Exception as exc:
        raise ModelError(f"Cannot read weights from {path}: {exc}.", "Is the file complete?") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, _Inert):
        out: dict[str, torch.Tensor] = {}
        _module_state(obj, "", out)
        obj = out
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} holds no state dict of tensors.", "Check that it is a weight file.")
    return dict(obj)


def fold_input_conv(weight: torch.Tensor, in_chans: int = 1) -> torch.Tensor:
    """Adapt a first-conv weight ``[O, C, k, k]`` to ``in_chans`` inputs (``in_chans=1``: sum over C).

    For ``in_chans=1`` the grey model on ``x`` equals the original model on ``x`` repeated ``C`` times.
    """
    if weight.shape[1] == in_chans:
        return weight
    if in_chans != 1:
        raise ModelError(f"Cannot fold a {weight.shape[1]}-channel stem to {in_chans} channels.")
    return weight.sum(dim=1, keepdim=True)


_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _rename_densenet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the old ``norm.1`` style keys of torchvision's DenseNet checkpoints to ``norm1``."""
    out = {}
    for key, value in state.items():
        m = _OLD_DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def load_imagenet(model: M, arch: str) -> M:
    """Load torchvision's ImageNet weights for ``arch`` into ``model`` (stem folded, classifier dropped)."""
    from cxr_tools.models.checkpoints import load_state_strict

    url = torchvision_weights_url(arch)
    path = _fetch(url, [_hub_checkpoints() / Path(url).name], f"ImageNet {arch}")
    state = read_state_dict(path)
    if arch.startswith("densenet"):
        state = _rename_densenet(state)
        stem, drop = "features.conv0.weight", "classifier."
    else:
        stem, drop = "conv1.weight", "fc."
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    if stem in state:
        state[stem] = fold_input_conv(state[stem])
    load_state_strict(model, state, source=str(path), skip_prefixes=("head.",))
    return model


def load_xrv(model: M, src: WeightSource = XRV_DENSENET121) -> M:
    """Load TorchXRayVision DenseNet-121 weights (``src``: "all" or a single-dataset set); its 18-finding
    classifier becomes the head when the model has 18 classes, otherwise the head keeps its fresh initialisation."""
    from cxr_tools.models.checkpoints import load_state_strict

    path = _fetch(src.url + src.file_name, xrv_search_paths(src.file_name), f"TorchXRayVision densenet121 {src.name}")
    state = read_state_dict(path)
    state = {k: v for k, v in _rename_densenet(state).items() if k != "op_threshs"}
    head = {f"head.{k.split('.', 1)[1]}": v for k, v in state.items() if k.startswith("classifier.")}
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    own = model.state_dict()
    if head and all(k in own and own[k].shape == v.shape for k, v in head.items()):
        state.update(head)
    if "features.conv0.weight" in state:
        state["features.conv0.weight"] = fold_input_conv(state["features.conv0.weight"])
    load_state_strict(model, state, source=str(path), skip_prefixes=("head.",))
    return model


def load_weights(model: M, arch: str, weights: str | None) -> M:
    """Apply weight source ``weights`` (``None``, ``"imagenet"``, ``"xrv"``, ``"xrv-nih"`` ...) to a freshly built
    ``model``."""
    if weights is None or weights == "none":
        return model
    if weights == "imagenet" and arch in _TV_ENUMS:
        return load_imagenet(model, arch)
    if weights in _XRV_SOURCES and arch == "densenet121":
        return load_xrv(model, _XRV_SOURCES[weights])
    raise ModelError(f"No '{weights}' weights for {arch}.", "Run `cxr models` to see each model's weights.")
