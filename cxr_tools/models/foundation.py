"""Foundation encoders as zoo models: a Hugging Face vision encoder behind the :class:`Classifier` interface.

``create_model("hf:DIR")`` / ``create_model("rad-dino")`` (names: :mod:`cxr_tools.models.encoders`) loads the
encoder with its own library, from a local folder or the local Hugging Face cache:

* **transformers** (a folder with ``config.json``): ``AutoModel`` and ``AutoImageProcessor``, ``local_files_only``.
  A two-tower model (SigLIP, CLIP) keeps its vision tower only; the embedding is what the architecture defines as
  the image's: ``get_image_features`` where the model has it (SigLIP's attention-pooled output, CLIP's projection),
  else ``pooler_output`` (DINOv2: the CLS token after the last layer norm), else the CLS token.
* **open_clip** (a folder with ``open_clip_config.json``, the ``hf-hub:`` format): the vision tower built from the
  config's ``vision_cfg`` and its ``visual.*`` weights; the embedding is ``encode_image``'s (not normalised). The
  text tower is never built, so no tokenizer or text-model config is needed.

A repo id is looked up in the Hugging Face cache first; it is downloaded (only the config, processor and weight
files) when it is not there, unless ``CXR_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` is set or no network answers: then a
:class:`ModelError` names the files and where to put them.

**Input.** The model takes what every zoo model takes, grey ``[n, 1, H, W]`` in [0, 1] (normalisation ``unit``:
the cache's uint8 / 255, :func:`~cxr_tools.models.inputs.to_model_input`), and feeds the encoder as its processor
would: resized (shortest side, then centre crop, or straight to the processor's height x width; antialiased,
clamped to [0, 1] like PIL), replicated to 3 channels, normalised with the processor's mean / std. Every step is
per image, so an image's embedding never depends on its batch-mates.

:meth:`FoundationEncoder.embed` is the embedding function ``[n, 1, H, W]`` (or ``[n, H, W]``) uint8 / float ->
``[n, d]`` float32 on the CPU that an embedding cache can wrap.

**Frozen runs.** ``cxr train --backbone NAME --freeze`` trains the head only; such a model saves only its head
(``unsaved_prefixes``) and records the encoder's source and weight checksum in ``model_args``, so the run reloads
the encoder from the same files (offline) and refuses different ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxr_tools.errors import ModelError
from cxr_tools.models.backbones import Classifier
from cxr_tools.models.encoders import PREFIX, encoder_source, preset_of

log = logging.getLogger(__name__)

TRANSFORMERS_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)
# What a download fetches: configs, processors and the weights of the encoder (not training lists or extra heads).
_DOWNLOAD = (
    "config.json",
    "preprocessor_config.json",
    "open_clip_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
EXTRA_HINT = "pip install 'cxr-tools[foundation]' (transformers, open_clip_torch, timm)."
_SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class InputContract:
    """How an encoder wants its pixels: ``resize`` the shortest side to this (0: straight to ``size``), then
    ``size`` = (height, width) by centre crop; ``mean`` / ``std`` per RGB channel on [0, 1]; ``interpolation``."""

    size: tuple[int, int]
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def record(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resize_shortest": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "channels": "grey replicated to 3",
        }


class FoundationEncoder(Classifier):
    """A pretrained vision encoder (``self.encoder``) with the zoo's linear head; see the module docstring.

    ``embed_fn(encoder, pixels) -> [n, d]`` computes the architecture's image embedding from prepared pixels.
    """

    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(
        self,
        encoder: nn.Module,
        embed_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        contract: InputContract,
        num_features: int,
        num_classes: int,
        *,
        source: str,
        library: str,
        frozen: bool = False,
        fingerprint: str = "",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self._embed_fn = embed_fn
        self.contract = contract
        self.num_features = int(num_features)
        self.norm = "layer"
        self.source = source
        self.library = library
        self.fingerprint = fingerprint
        self.register_buffer("_mean", torch.tensor(contract.mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("_std", torch.tensor(contract.std, dtype=torch.float32).view(1, -1, 1, 1), False)
        self._init_head(num_classes)
        self.frozen = False
        if frozen:
            self.freeze_encoder()

    def freeze_encoder(self) -> None:
        """Train the head only: the encoder's weights stop learning and it stays in eval mode (no dropout), and a
        model folder saves the head only (the encoder reloads from its source)."""
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.frozen = True
        self.features_frozen = True
        self.encoder.eval()
        # how the run reloads: the same encoder files (checked by checksum), frozen, head from the model folder
        self.model_args = {**getattr(self, "model_args", {}), "frozen": True, "encoder_sha256": self.fingerprint}

    @property
    def unsaved_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes a model folder leaves out (the frozen encoder, reloaded from its source)."""
        return ("encoder.",) if self.frozen else ()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Grey ``[n, 1, H, W]`` in [0, 1] -> the encoder's ``[n, 3, h, w]`` pixels (resize, crop, mean / std)."""
        c = self.contract
        x = x.float()
        h, w = x.shape[-2:]
        mode = c.interpolation if c.interpolation in ("bicubic", "bilinear") else "bilinear"
        if c.resize:
            scale = c.resize / min(h, w)
            target = (max(c.size[0], round(h * scale)), max(c.size[1], round(w * scale)))
        else:
            target = c.size
        if (h, w) != tuple(target):
            x = F.interpolate(x, size=target, mode=mode, align_corners=False, antialias=True).clamp_(0.0, 1.0)
        top, left = (target[0] - c.size[0]) // 2, (target[1] - c.size[1]) // 2
        x = x[..., top : top + c.size[0], left : left + c.size[1]]
        x = x.expand(-1, len(c.mean), -1, -1)
        return (x - self._mean) / self._std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed_fn(self.encoder, self.prepare(x)).float()

    def embed(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Embeddings ``[n, d]`` (float32, CPU) of grey images ``[n, 1, H, W]`` or ``[n, H, W]``: uint8 (0-255)
        or float in [0, 1]. Eval mode, no gradients, ``batch_size`` images at a time; rows are independent."""
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != 1:
            raise ModelError(f"embed() takes grey images [n, 1, H, W]; got shape {tuple(x.shape)}.")
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        device = self._mean.device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                parts = [
                    self.forward_features(x[i : i + batch_size].to(device=device, dtype=torch.float32) / scale).cpu()
                    for i in range(0, len(x), batch_size)
                ]
        finally:
            self.train(was_training)
        return torch.cat(parts) if parts else torch.empty(0, self.num_features)


def _extra_missing(package: str) -> ModelError:
    return ModelError(f"Foundation encoders need {package}, which is not installed.", EXTRA_HINT)


def offline() -> bool:
    """Whether downloads are off: ``CXR_OFFLINE`` or Hugging Face's own ``HF_HUB_OFFLINE``."""
    from cxr_tools.models.pretrained import offline as cxr_offline

    return cxr_offline() or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _hub_cache() -> str:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, else ``HF_HOME/hub``), so a
    process that sets it after importing huggingface_hub still finds its files."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _library_of(folder: Path) -> str | None:
    if (folder / "open_clip_config.json").is_file():
        return "open_clip"
    if (folder / "config.json").is_file():
        return "transformers"
    return None


def _files_hint(name: str, repo: str | None) -> str:
    preset = preset_of(name)
    open_clip = preset is not None and preset.library == "open_clip"
    files: tuple[str, ...] = OPEN_CLIP_FILES if open_clip else TRANSFORMERS_FILES
    if preset is None and repo is not None:
        files = (*TRANSFORMERS_FILES, "or", *OPEN_CLIP_FILES)
    what = " ".join(files)
    if repo is None:
        return f"Put {what} in that folder (from the model's Hugging Face repo), or pass hf:ORG/NAME."
    return (
        f"On a machine with internet run `hf download {repo} {what.replace(' or ', ' ')}` (fills the cache "
        f"{_hub_cache()}; copy it here or set HF_HOME), or `--local-dir DIR` and pass --backbone hf:DIR."
    )


def resolve_folder(name: str) -> Path:
    """The local folder holding encoder ``name``'s files: the folder itself, else its repo id's snapshot in the
    Hugging Face cache, else a download (unless offline); a :class:`ModelError` saying which files to put where."""
    source = encoder_source(name)
    folder = Path(source).expanduser()
    looks_local = folder.is_absolute() or source.startswith((".", "~")) or folder.exists()
    if looks_local:
        if not folder.is_dir():
            raise ModelError(f"Encoder folder {folder} does not exist.", _files_hint(name, None))
        if _library_of(folder) is None:
            raise ModelError(
                f"{folder} holds no encoder (neither config.json nor open_clip_config.json).", _files_hint(name, None)
            )
        return folder.resolve()
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - an install without the foundation extra
        raise _extra_missing("huggingface_hub") from exc
    try:
        cached = Path(
            snapshot_download(source, allow_patterns=list(_DOWNLOAD), local_files_only=True, cache_dir=_hub_cache())
        )
        if _library_of(cached) is not None and any((cached / f).is_file() for f in _WEIGHT_FILES):
            return cached
    except Exception:  # not in the cache (LocalEntryNotFoundError) or an invalid repo id
        pass
    if offline():
        raise ModelError(
            f"Encoder {source} is not in the Hugging Face cache and downloads are off (CXR_OFFLINE / HF_HUB_OFFLINE).",
            _files_hint(name, source),
        )
    log.info("downloading encoder %s into the Hugging Face cache", source)
    try:
        folder = Path(snapshot_download(source, allow_patterns=list(_DOWNLOAD), cache_dir=_hub_cache()))
    except Exception as exc:  # no network, unknown or gated repo
        raise ModelError(
            f"Could not download encoder {source}: {str(exc).splitlines()[0]}.", _files_hint(name, source)
        ) from exc
    if _library_of(folder) is None:
        raise ModelError(f"{source} holds no transformers or open_clip encoder.", "Pick another --backbone.")
    return folder


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    """A weight file's sha256, computed once per process for one (path, size, mtime)."""
    from cxr_tools.runtime.fs import file_sha256

    return file_sha256(Path(path))


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the encoder's weight files (names and contents), so a frozen run can refuse other weights."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name in _WEIGHT_FILES or _SHARD.match(p.name)))
    h = hashlib.sha256()
    for p in files:
        real = p.resolve()
        st = real.stat()
        h.update(p.name.encode() + b"\0" + _file_sha256(str(real), st.st_size, st.st_mtime).encode())
    return h.hexdigest()


@contextmanager
def _quiet_libraries() -> Any:
    """No progress bars or load reports from transformers / huggingface_hub on the user's terminal."""
    import transformers

    tf_logging = transformers.utils.logging
    before = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(before)
        tf_logging.enable_progress_bar()


def _size_pair(value: Any) -> tuple[int | None, int | None, int | None]:
    """(height, width, shortest_edge) of a processor ``size`` / ``crop_size`` (dict or SizeDict)."""
    if value is None:
        return None, None, None
    get = value.get if isinstance(value, dict) else lambda k: getattr(value, k, None)
    return get("height"), get("width"), get("shortest_edge")


def _transformers_contract(processor: Any, fallback: int) -> InputContract:
    mean = tuple(float(v) for v in (getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in (getattr(processor, "image_std", None) or (0.5, 0.5, 0.5)))
    height, width, shortest = _size_pair(getattr(processor, "size", None))
    crop_h, crop_w, _ = _size_pair(getattr(processor, "crop_size", None))
    resample = getattr(processor, "resample", 3)
    interpolation = "bicubic" if int(getattr(resample, "value", resample) or 3) == 3 else "bilinear"
    if getattr(processor, "do_center_crop", False) and crop_h and crop_w:
        return InputContract((int(crop_h), int(crop_w)), int(shortest or min(crop_h, crop_w)), mean, std, interpolation)
    if height and width:
        return InputContract((int(height), int(width)), 0, mean, std, interpolation)
    side = int(shortest or fallback)
    return InputContract((side, side), side, mean, std, interpolation)


def _load_transformers(folder: Path) -> tuple[nn.Module, Callable[..., torch.Tensor], InputContract]:
    try:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
    except ImportError as exc:  # pragma: no cover - an install without the foundation extra
        raise _extra_missing("transformers") from exc
    with _quiet_libraries():
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"Cannot load the transformers encoder in {folder}: {str(exc).splitlines()[0]}",
                f"The folder needs {', '.join(TRANSFORMERS_FILES)} as save_pretrained writes them.",
            ) from exc
    if getattr(model, "text_model", None) is not None:  # a two-tower model: keep the image side only
        model.text_model = None
    if hasattr(model, "text_projection"):
        model.text_projection = None
    vision = getattr(config, "vision_config", config)
    contract = _transformers_contract(processor, int(getattr(vision, "image_size", 224) or 224))
    return model, _transformers_embedding, contract


def _transformers_embedding(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    net: Any = model
    if hasattr(net, "get_image_features"):
        out: Any = net.get_image_features(pixel_values=pixels)
        if isinstance(out, torch.Tensor):
            return out
    else:
        out = model(pixel_values=pixels)
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out.last_hidden_state[:, 0]


def _load_open_clip(folder: Path) -> tuple[nn.Module, Callable[..., torch.Tensor], InputContract]:
    try:
        from open_clip.factory import load_state_dict
        from open_clip.model import _build_vision_tower
    except ImportError as exc:  # pragma: no cover - an install without the foundation extra
        raise _extra_missing("open_clip_torch") from exc
    weights = next((folder / f for f in _WEIGHT_FILES if f.startswith("open_clip") and (folder / f).is_file()), None)
    try:
        doc = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
        cfg = dict(doc["model_cfg"])
        vision_cfg = {**cfg["vision_cfg"], "timm_model_pretrained": False}  # the weights come from the file
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{folder / 'open_clip_config.json'} is not an open_clip config: {exc}.") from exc
    if weights is None:
        raise ModelError(f"{folder} has open_clip_config.json but no weights.", f"Put {OPEN_CLIP_FILES[1]} there.")
    visual = _build_vision_tower(int(cfg["embed_dim"]), vision_cfg, quick_gelu=bool(cfg.get("quick_gelu", False)))
    state = load_state_dict(str(weights))
    own = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    try:
        visual.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"The open_clip weights in {weights} do not fit its config: {str(exc).splitlines()[0]}"
        ) from exc
    pre = dict(doc.get("preprocess_cfg") or {})
    size = vision_cfg.get("image_size", 224)
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    resize_mode = str(pre.get("resize_mode", "shortest"))
    contract = InputContract(
        hw,
        0 if resize_mode == "squash" else min(hw),
        tuple(float(v) for v in pre.get("mean", _OPENAI_MEAN)),
        tuple(float(v) for v in pre.get("std", _OPENAI_STD)),
        str(pre.get("interpolation", "bicubic")),
    )
    return visual, _open_clip_embedding, contract


def _open_clip_embedding(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    out = visual(pixels)
    return out[0] if isinstance(out, tuple) else out


def _build(name: str, folder: Path, num_classes: int, num_features: int = 0) -> FoundationEncoder:
    library = _library_of(folder)
    load = _load_open_clip if library == "open_clip" else _load_transformers
    encoder, embed_fn, contract = load(folder)
    encoder.eval()
    model = FoundationEncoder(
        encoder, embed_fn, contract, num_features or 1, 0, source=str(folder), library=str(library)
    )
    if not num_features:
        with torch.no_grad():
            num_features = int(model.forward_features(torch.zeros(1, 1, *contract.size)).shape[-1])
    model.num_features = num_features
    model.reset_head(num_classes)
    return model


def create_encoder(
    name: str,
    num_classes: int = 1,
    frozen: bool = False,
    encoder_sha256: str | None = None,
    **unexpected: Any,
) -> FoundationEncoder:
    """Encoder ``name`` (``hf:...`` or a preset) with a ``num_classes``-output head (0 = features only).

    ``frozen`` trains the head only (and saves only it); ``encoder_sha256``, recorded by a frozen run, must match
    the weights found, so a run never silently reloads another encoder. Other options are refused: an encoder has
    its own weights and normalisation layers.
    """
    if unexpected:
        raise ModelError(
            f"Encoder '{name}' takes no {', '.join(f'--{k}' for k in sorted(unexpected))}.",
            "Its weights and layers are the published ones; drop the option.",
        )
    folder = resolve_folder(name)
    fingerprint = weights_fingerprint(folder)
    if encoder_sha256 and encoder_sha256 != fingerprint:
        raise ModelError(
            f"The weights of encoder '{name}' in {folder} differ from those this run was trained on.",
            "Restore the encoder files the run was trained with (model.json model_args.encoder_sha256), or retrain.",
        )
    model = _build(name, folder, num_classes)
    model.fingerprint = fingerprint
    model.model_name = name if not name.startswith(PREFIX) or _is_repo(name) else f"{PREFIX}{folder}"
    model.model_args = {"num_classes": int(num_classes)}
    if frozen:
        model.freeze_encoder()
    model.pretrained = model.model_name
    model.normalisation = "unit"
    model.image_size = int(max(model.contract.size))
    return model


def _is_repo(name: str) -> bool:
    source = encoder_source(name)
    return not Path(source).expanduser().exists() and not source.startswith(("/", ".", "~"))


def describe_encoder(model: FoundationEncoder) -> dict[str, Any]:
    """What a summary or model card says about an encoder: its name, library, folder, input contract, size."""
    return {
        "name": model.model_name,
        "library": model.library,
        "folder": model.source,
        "input": model.contract.record(),
        "embedding_size": model.num_features,
        "weights_sha256": model.fingerprint,
    }


def encoder_run(name: str, device: Any = "cpu") -> tuple[FoundationEncoder, dict[str, Any]]:
    """``(model, meta)`` standing in for a run when ``cxr evaluate`` scores an encoder without training: the
    encoder with no head, and a ``model.json``-like meta whose lineage record (no classes, no patients) carries
    the encoder's data card, so the leak check and the pretraining notes apply as to any run."""
    from cxr_tools.models.lineage import encoder_record

    model = create_encoder(name, num_classes=0)
    meta: dict[str, Any] = {
        "architecture": model.model_name,
        "model_args": {},
        "pretrained": model.model_name,
        "input": {"channels": 1, "image_size": 0, "normalisation": "unit", "preprocessing": {}},
        "labels": [],
        "num_classes": 0,
        "embedding_size": model.num_features,
        "training": "encoder",
        "extra": {"encoder": describe_encoder(model)},
        "lineage": encoder_record(str(model.model_name), model.source),
        "weights_sha256": model.fingerprint,
        "path": None,
    }
    return model.to(device).eval(), meta
