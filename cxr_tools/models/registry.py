"""The model zoo: a registry filled by a decorator, one factory, one card per model.

Modelled on timm's ``_registry.py`` / ``_factory.py``: every entry is a short recipe function decorated with
:func:`register_model`; :func:`create_model` looks the recipe up and calls it with the caller's overrides,
dropping overrides that are ``None`` so that CLI options the user did not set never clobber a recipe's
defaults. A :class:`ModelCard` states each model's input contract (channels, size, intensity range), its
feature size and where pretrained weights come from, so a run directory can say exactly what its model eats.

The recipes live in :mod:`cxr_tools.models.zoo`, imported on first use so that importing this module stays
cheap (no torch).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ModelError

if TYPE_CHECKING:
    import torch

    from cxr_tools.models.backbones import Classifier

# How the pixel values a model expects relate to an image scaled to [0, 1]: x_model = x01 * scale + shift.
# "unit" is what the cache gives (uint8 / 255); "imagenet" is ImageNet's mean/std folded to one grey channel
# (the means and stds of R, G, B averaged, as timm does for in_chans=1); "xrv" is TorchXRayVision's
# [-1024, 1024] range.
NORMALISATIONS: dict[str, tuple[float, float]] = {
    "unit": (1.0, 0.0),
    "imagenet": (1.0 / 0.226, -0.449 / 0.226),
    "xrv": (2048.0, -1024.0),
}
NORMALISATION_HELP: dict[str, str] = {
    "unit": "[0, 1] (uint8 / 255)",
    "imagenet": "(x - 0.449) / 0.226 on [0, 1] (ImageNet mean/std, grey)",
    "xrv": "[-1024, 1024] (TorchXRayVision)",
}


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where a pretrained weight set comes from and what input it expects.

    Attributes:
        name: the value of ``create_model(..., weights=NAME)``.
        description: one line for ``cxr models``.
        normalisation: key of :data:`NORMALISATIONS` the weights were trained with.
        image_size: the side length the weights were trained at.
        file_name: the cache file name (as the upstream library names it, so an existing cache is reused).
        url: where the file is downloaded from when it is not cached and the network is allowed.
    """

    name: str
    description: str
    normalisation: str
    image_size: int
    file_name: str
    url: str


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a zoo entry is and what it expects.

    Attributes:
        name: registry name (``create_model(name)``).
        family: ``conv4``, ``simple-cnn``, ``resnet`` or ``densenet``.
        in_chans: input channels (always 1: chest X-rays are grey).
        image_size: default image side in pixels (any size >= ``min_image_size`` works: global pooling).
        min_image_size: the smallest side the architecture accepts.
        normalisation: default input range (see :data:`NORMALISATIONS`); a weight source may use another.
        num_features: size of ``forward_features`` output, the embedding size.
        num_classes: default number of outputs of the linear head (0 = no head).
        num_params: parameters with the default head, counted on the meta device.
        norm: normalisation layer kind (``batch``, ``group``, ``instance``, ``none``).
        weights: available pretrained weight sources (random init is always available).
        notes: one paragraph for ``cxr models NAME``.
    """

    name: str
    family: str
    in_chans: int
    image_size: int
    min_image_size: int
    normalisation: str
    num_features: int
    num_classes: int
    num_params: int
    norm: str
    weights: tuple[WeightSource, ...]
    notes: str

    def weight_source(self, name: str) -> WeightSource:
        """The weight source called ``name``; a :class:`ModelError` listing the known ones otherwise."""
        for source in self.weights:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.weights) or "none (random initialisation only)"
        raise ModelError(
            f"Model '{self.name}' has no pretrained weights '{name}'.", f"Available for this model: {known}."
        )


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Classifier]
    family: str
    image_size: int
    min_image_size: int
    normalisation: str
    weights: tuple[WeightSource, ...]
    notes: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str,
    *,
    family: str,
    image_size: int = 224,
    min_image_size: int = 32,
    normalisation: str = "unit",
    weights: tuple[WeightSource, ...] = (),
    notes: str = "",
) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator that registers a recipe ``fn(**overrides) -> Classifier`` under ``name``.

    The recipe's keyword defaults are the model's defaults; its docstring's first line is not used (the
    card's ``notes`` are). A name can be registered once.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}")

    def decorator(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = _Entry(fn, family, image_size, min_image_size, normalisation, weights, notes)
        return fn

    return decorator


def _ensure_zoo() -> None:
    from cxr_tools.models import zoo  # noqa: F401  (registers the recipes)


def _entry(name: str) -> _Entry:
    _ensure_zoo()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ModelError(f"Unknown model '{name}'.", suggestion(name))
    return entry


def suggestion(name: str) -> str:
    """A hint naming registered models close to ``name`` (difflib), or pointing at ``cxr models``."""
    _ensure_zoo()
    close = difflib.get_close_matches(name.strip("*?[]"), list(_REGISTRY), n=3, cutoff=0.5)
    return f"Did you mean {', '.join(close)}?" if close else "Run `cxr models` to list the zoo."


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard (``resnet*``) or a substring."""
    _ensure_zoo()
    names = sorted(_REGISTRY)
    if not pattern:
        return names
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def is_model(name: str) -> bool:
    """Whether ``name`` is registered, or names a foundation encoder (``hf:...`` or a preset,
    :mod:`cxr_tools.models.encoders`)."""
    from cxr_tools.models.encoders import is_encoder

    _ensure_zoo()
    return name in _REGISTRY or is_encoder(name)


def create_model(name: str, **overrides: Any) -> Classifier:
    """Build zoo model ``name``; keyword overrides that are ``None`` are dropped (recipe default wins).

    The model records how it was built (``model.model_name``, ``model.model_args`` without ``weights``) and
    its input contract (``model.normalisation``, ``model.image_size``), which :func:`save_model_dir` writes.
    Unknown override names raise a :class:`ModelError` listing the accepted ones.

    Example:
        >>> model = create_model("conv4-tiny", num_classes=2)
        >>> model(torch.rand(4, 1, 32, 32)).shape
        torch.Size([4, 2])
    """
    from cxr_tools.models.encoders import is_encoder

    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if is_encoder(name):  # a foundation encoder, loaded with its own library
        from cxr_tools.models.foundation import create_encoder

        return create_encoder(name, **kwargs)
    entry = _entry(name)
    if kwargs.get("weights") == "none":
        del kwargs["weights"]
    weights = kwargs.get("weights")
    source = None
    if weights is not None:
        source = model_card(name).weight_source(str(weights))
    import inspect

    params = inspect.signature(entry.fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ModelError(
                f"Model '{name}' does not accept option(s) {', '.join(unknown)}.",
                f"Accepted: {', '.join(params) or 'none'}.",
            )
    try:
        model = entry.fn(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"Cannot build model '{name}' with {kwargs}: {exc}") from exc
    model.model_name = name
    model.model_args = {k: v for k, v in kwargs.items() if k != "weights"}
    model.pretrained = source.name if source else None
    model.normalisation = source.normalisation if source else entry.normalisation
    model.image_size = source.image_size if source else entry.image_size
    return model


def model_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of ``name`` (parameter count computed once, on the meta device); a foundation
    encoder's is read from the encoder itself (loaded once)."""
    from cxr_tools.models.encoders import is_encoder

    if is_encoder(name):
        return _encoder_card(name)
    return _card(name)


@functools.cache
def _encoder_card(name: str) -> ModelCard:
    from cxr_tools.models.encoders import preset_of
    from cxr_tools.models.foundation import create_encoder

    model = create_encoder(name, num_classes=1)
    preset = preset_of(name)
    return ModelCard(
        name=name,
        family="foundation",
        in_chans=1,
        image_size=int(model.image_size),
        min_image_size=16,
        normalisation="unit",
        num_features=int(model.num_features),
        num_classes=1,
        num_params=sum(p.numel() for p in model.parameters()),
        norm="layer",
        weights=(),
        notes=f"{model.library} encoder from {model.source}; input {model.contract.record()}"
        + (f"; preset {preset.name} ({preset.licence})" if preset else ""),
    )


@functools.cache
def _card(name: str) -> ModelCard:
    entry = _entry(name)
    import torch

    with torch.device("meta"):
        model = entry.fn()
    num_params = sum(p.numel() for p in model.parameters())
    return ModelCard(
        name=name,
        family=entry.family,
        in_chans=int(getattr(model, "in_chans", 1)),
        image_size=entry.image_size,
        min_image_size=entry.min_image_size,
        normalisation=entry.normalisation,
        num_features=int(model.num_features),
        num_classes=int(model.num_classes),
        num_params=int(num_params),
        norm=str(getattr(model, "norm", "batch")),
        weights=entry.weights,
        notes=entry.notes,
    )


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Map images in [0, 1] to the range a model expects (``kind`` from :data:`NORMALISATIONS`)."""
    if kind not in NORMALISATIONS:
        raise ModelError(f"Unknown normalisation '{kind}'.", f"Known: {', '.join(NORMALISATIONS)}.")
    scale, shift = NORMALISATIONS[kind]
    return x * scale + shift
