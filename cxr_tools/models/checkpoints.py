"""Model folders (``RUN/model/``): the model card, writing, reading and checking one.

A **model folder** is self-describing and loads without running pickled code (docs/design.md)::

    model.json          format + version, architecture name and create_model arguments, input contract
                        (channels, image size, normalisation), label space, embedding size, training kind,
                        cache manifest hash, tool / torch versions, weights sha256; written last (= complete)
    model.safetensors   the state dict (safetensors: tensors only, no code)

:func:`load_model_dir` rebuilds the architecture through the registry and loads the tensors strictly, so a
folder from another architecture fails with the keys that differ instead of half-loading.

:func:`model_meta` builds the model card (the ``meta`` of :func:`save_model_dir`) of a trained model. Training
checkpoints (``RUN/checkpoints/*.pt``) are written and read by :mod:`cxr_tools.runtime.checkpointing`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_tools import __version__
from cxr_tools.errors import ModelError
from cxr_tools.runtime.fs import atomic_path, atomic_write_json, file_sha256

MODEL_FORMAT = "cxr-model"
MODEL_FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_KINDS = ("supervised", "siamese", "maml", "protonet", "finetune", "scratch")
_SHOW = 5


def _few(items: Sequence[str]) -> str:
    items = list(items)
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def load_state_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, skip_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``model``; a :class:`ModelError` naming missing / unexpected / mis-shaped keys.

    Keys under ``skip_prefixes`` may be missing from ``state`` (e.g. a head the weights do not provide).
    """
    own = model.state_dict()
    skip = tuple(skip_prefixes)
    # BatchNorm's num_batches_tracked is absent from checkpoints older than PyTorch 0.4.1 (e.g. torchvision's
    # DenseNet file); it only matters for momentum=None, so a missing one keeps its fresh value.
    missing = [k for k in own if k not in state and not k.startswith(skip) and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape and not k.startswith(skip)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (file vs model): {_few(shapes)}")
        raise ModelError(
            f"The weights in {source} do not fit this architecture ({'; '.join(parts)}).",
            "Use the architecture and options the weights were saved with.",
        )
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)


# --- model folders ------------------------------------------------------------------------------------------


def _model_json_path(path: Path) -> Path:
    if (path / MODEL_JSON).is_file():
        return path / MODEL_JSON
    if (path / "model" / MODEL_JSON).is_file():  # a run directory
        return path / "model" / MODEL_JSON
    raise ModelError(
        f"{path} is not a model folder (no {MODEL_JSON}).",
        "Pass RUN/model or a run directory of a finished training; an interrupted run has no model folder yet.",
    )


def model_meta(cache: Any, model: nn.Module, labels: Sequence[str], kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The model card of a model trained on ``cache``: the ``meta`` of :func:`save_model_dir`, built in one place.

    Args:
        cache: the cache reader trained on (its ``manifest_hash``, ``image_shape`` and ``manifest``: what a later
            ``cxr evaluate`` / ``cxr predict`` checks its inputs against). Typed loosely because models/ never
            imports data/ (docs/design.md, layers).
        model: the trained model (its ``normalisation`` is the input contract; its ``pretrained`` weight source
            goes into the lineage record, with the data card of those weights).
        labels: the label space of the outputs (empty for embeddings and episode-slot heads).
        kind: the training kind (``supervised``, ``siamese``, ``maml``).
        extra: the trainer's own settings and results.
    """
    return {
        "labels": list(labels),
        "training": kind,
        "cache_manifest_hash": cache.manifest_hash,
        "image_size": int(min(cache.image_shape)),
        "normalisation": str(getattr(model, "normalisation", "unit")),
        "preprocessing": dict(cache.manifest.get("preprocessing") or {}),
        "pretrained": getattr(model, "pretrained", None),
        "extra": extra,
    }


def save_model_dir(model: nn.Module, meta: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a model folder at ``path`` (created; files replaced atomically).

    ``model`` must come from :func:`create_model` (it knows its name and arguments). ``meta`` keys:
    ``labels`` (names of the head's outputs, may be empty), ``training`` (one of :data:`TRAINING_KINDS`),
    ``cache_manifest_hash``, optional ``image_size`` / ``normalisation`` (what it was trained with; default
    the model's), ``preprocessing`` (the cache manifest's preprocessing parameters, so ``cxr predict`` can
    apply the same operations to new images), and ``extra`` (a JSON-able dict for the trainer, e.g. the
    Siamese distance). Returns the path of ``model.json``.
    """
    name = getattr(model, "model_name", None)
    if name is None:
        raise ModelError("Only models built with create_model() can be saved as a model folder.")
    labels = [str(x) for x in meta.get("labels") or []]
    num_classes = int(getattr(model, "num_classes", 0))
    if labels and num_classes and len(labels) != num_classes:
        raise ModelError(f"{len(labels)} label names for a head with {num_classes} outputs.")
    training = str(meta.get("training", "supervised"))
    if training not in TRAINING_KINDS:
        raise ModelError(f"Unknown training kind '{training}'.", f"Use one of {', '.join(TRAINING_KINDS)}.")
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    skip = tuple(getattr(model, "unsaved_prefixes", ()))  # a frozen foundation encoder reloads from its source
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if not (skip and k.startswith(skip))
    }
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT, "architecture": name})
    doc = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": name,
        "model_args": dict(getattr(model, "model_args", {})),
        "pretrained": getattr(model, "pretrained", None),
        "input": {
            "channels": int(getattr(model, "in_chans", 1)),
            "image_size": int(meta.get("image_size") or getattr(model, "image_size", 0) or 0),
            "normalisation": str(meta.get("normalisation") or getattr(model, "normalisation", "unit")),
            "preprocessing": dict(meta.get("preprocessing") or {}),
        },
        "labels": labels,
        "num_classes": num_classes,
        "embedding_size": int(getattr(model, "num_features", 0)),
        "training": training,
        "cache_manifest_hash": meta.get("cache_manifest_hash"),
        "extra": dict(meta.get("extra") or {}),
        "lineage": meta.get("lineage"),  # what this run and its parents trained on: cxr_tools/models/lineage.py
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": file_sha256(out / WEIGHTS_FILE),
        "tool_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        json.dumps(doc)
    except TypeError as exc:
        raise ModelError(f"Model metadata is not JSON-serialisable: {exc}.") from exc
    return atomic_write_json(out / MODEL_JSON, doc)


def read_model_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model folder (or of ``RUN/model``), checked for format and version."""
    json_path = _model_json_path(Path(path))
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read {json_path}: {exc}.", "The model folder is corrupt; re-export it.") from exc
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{json_path} is not a cxr-tools model card.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise ModelError(
            f"{json_path} has model format version {version}; this cxr-tools reads up to {MODEL_FORMAT_VERSION}.",
            "Upgrade cxr-tools.",
        )
    meta["path"] = str(json_path.parent)
    return meta


def load_model_dir(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a model folder through the registry and load its tensors (no pickle).

    Returns ``(model, meta)`` with the model in eval mode on ``map_location`` and ``meta`` the parsed
    ``model.json`` (plus ``path``). Accepts a run directory too (uses ``RUN/model``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cxr_tools.models.registry import create_model

    meta = read_model_meta(path)
    folder = Path(meta["path"])
    weights = folder / str(meta.get("weights_file") or WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelError(f"{weights} is missing.", "The model folder is incomplete; re-export it.")
    expected = meta.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise ModelError(
            f"{weights} does not match the checksum in model.json: the file is damaged or was replaced.",
            "Copy the model folder again from where it was trained, or retrain it.",
        )
    args = dict(meta.get("model_args") or {})
    args.pop("weights", None)
    model = create_model(str(meta.get("architecture")), **args)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"Cannot read {weights}, it is damaged ({exc}).", "Copy the model folder again, or retrain it."
        ) from exc
    load_state_strict(model, state, source=str(weights), skip_prefixes=tuple(getattr(model, "unsaved_prefixes", ())))
    model.pretrained = meta.get("pretrained")
    model.normalisation = meta["input"]["normalisation"]
    model.image_size = meta["input"]["image_size"]
    model.to(map_location)
    model.eval()
    return model, meta


def check_compatible(
    meta: Mapping[str, Any],
    *,
    image_size: int | None = None,
    labels: Sequence[str] | None = None,
    normalisation: str | None = None,
    channels: int | None = None,
) -> None:
    """Raise a :class:`ModelError` when data with these properties does not fit the model of ``meta``.

    ``None`` skips a check. Labels must match in order (they name the head's outputs).
    """
    where = meta.get("path", "the model")
    contract = meta.get("input") or {}
    if channels is not None and int(contract.get("channels", 1)) != channels:
        raise ModelError(f"{where} takes {contract.get('channels')}-channel images, the data has {channels}.")
    if image_size is not None and contract.get("image_size") and int(contract["image_size"]) != int(image_size):
        raise ModelError(
            f"{where} was trained on {contract['image_size']} px images, the data is {image_size} px.",
            f"Preprocess the data at --size {contract['image_size']} (or retrain the model).",
        )
    if normalisation is not None and contract.get("normalisation") not in (None, normalisation):
        raise ModelError(
            f"{where} expects '{contract['normalisation']}' input normalisation, not '{normalisation}'.",
            "Use the normalisation recorded in model.json.",
        )
    if labels is not None and meta.get("labels"):
        have = list(meta["labels"])
        if list(labels) != have:
            missing = [x for x in labels if x not in have]
            extra = [x for x in have if x not in labels]
            detail = (
                f"not in the model: {_few(missing) or '-'}; only in the model: {_few(extra) or '-'}"
                if missing or extra
                else "same labels in another order"
            )
            raise ModelError(
                f"Label space mismatch with {where} ({detail}).",
                f"The model predicts: {_few(have)}.",
            )


# --- training checkpoints -----------------------------------------------------------------------------------
