"""A zoo model for given images: the registry's ``create_model`` with the size checked first, or started from the
feature extractor of a trained run (``train-siamese --backbone-from RUN``, ``meta-train --init RUN``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cxr_tools.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


def check_model_name(name: str) -> None:
    """Refuse an unknown zoo model before any work (suggesting close names)."""
    from cxr_tools.models.registry import is_model, suggestion

    if not is_model(name):
        raise ModelError(f"Unknown model '{name}'.", suggestion(name))


def create_for_images(name: str, image_side: int, where: str, **overrides: Any) -> Any:
    """``create_model(name, **overrides)`` after checking that images of ``image_side`` px suit the model.

    ``where`` names the images in the error (e.g. ``cache PATH``).
    """
    from cxr_tools.models.encoders import is_encoder
    from cxr_tools.models.registry import create_model, model_card

    if is_encoder(name):  # resizes any image to its own input size
        return create_model(name, **overrides)
    card = model_card(name)  # unknown names: a ModelError with suggestions
    if image_side < card.min_image_size:
        raise ConfigError(
            f"Model '{name}' needs images of at least {card.min_image_size} px; {where} has {image_side} px.",
            "Preprocess at a larger --size or pick another --model.",
        )
    return create_model(name, **overrides)


def features_from_run(
    path: Path, flag: str, architecture: str | None, num_classes: int, image_size: int
) -> tuple[Any, dict[str, Any]]:
    """A new ``num_classes``-output model holding every weight of run ``path``'s model except its head.

    A Siamese wrapper gives its backbone. The run's architecture must be ``architecture`` (when given) and its
    input contract must fit one-channel images of ``image_size`` px; the model keeps the run's normalisation.
    ``flag`` names the option in errors. Returns the model and the run's model card.
    """
    from cxr_tools.models.checkpoints import check_compatible, load_model_dir, load_state_strict, read_model_meta
    from cxr_tools.models.registry import create_model

    if not path.exists():
        raise ModelError(
            f"{flag} {path} does not exist.", "Pass a finished run directory, its model/ folder, or imagenet."
        )
    meta = read_model_meta(path)
    arch = str(meta.get("architecture"))
    if architecture and architecture != arch:
        raise ModelError(
            f"{flag} {path} holds a {arch} backbone but --backbone is {architecture}.",
            f"Drop --backbone (it follows {flag}) or pass --backbone {arch}.",
        )
    check_compatible(meta, image_size=image_size, channels=1)
    source, meta = load_model_dir(path)
    source = getattr(source, "backbone", source)  # a Siamese wrapper holds its backbone
    args = {k: v for k, v in dict(meta.get("model_args") or {}).items() if k not in {"num_classes", "weights"}}
    model = create_model(arch, num_classes=num_classes, **args)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    load_state_strict(model, state, source=f"{flag} {path}", skip_prefixes=("head.",))
    model.normalisation = meta["input"]["normalisation"]
    model.image_size = int(meta["input"].get("image_size") or image_size)
    return model, meta


def initial_model(
    init: str | None, backbone: str | None, num_classes: int, image_size: int, *, default: str = "conv4"
) -> tuple[Any, dict[str, Any]]:
    """The model a meta-learner starts from, and where its weights came from (for the model card).

    ``init``: None / ``random`` (``backbone`` or ``default``, random weights), ``imagenet`` (pretrained weights),
    or a run / model directory whose feature extractor is taken (:func:`features_from_run`, ``--init``).
    """
    from cxr_tools.models.registry import create_model

    text = (init or "").strip()
    if text.lower() in {"", "none", "random", "scratch"}:
        return create_model(backbone or default, num_classes=num_classes), {"init": "random"}
    if text.lower() == "imagenet":
        return create_model(backbone or default, num_classes=num_classes, weights="imagenet"), {"init": "imagenet"}
    model, meta = features_from_run(Path(text), "--init", backbone, num_classes, image_size)
    arch = str(meta.get("architecture"))
    return model, {"init": str(Path(text)), "init_training": meta.get("training"), "init_architecture": arch}


def backbone_from_run(
    path: Path, architecture: str, num_classes: int, image_side: int, where: str, norm: str | None
) -> Any:
    """A ``num_classes``-output ``architecture`` holding run ``path``'s feature extractor (a fresh head).

    The run must hold that architecture, and ``norm`` (when given) must be its normalisation layer; the model
    options and the input contract's normalisation are the run's. A different image size only warns: global
    pooling accepts any size, and the features are fine-tuned on these images anyway.
    """
    from cxr_tools.models.checkpoints import load_model_dir, load_state_strict

    source, meta = load_model_dir(path)
    arch = str(meta.get("architecture"))
    if arch != architecture:
        raise ModelError(
            f"--backbone-from {path} holds a '{arch}' model, not '{architecture}'.",
            f"Pass --backbone {arch}, or a run trained with {architecture}.",
        )
    args = {k: v for k, v in (meta.get("model_args") or {}).items() if k not in {"num_classes", "weights"}}
    if norm is not None and args.get("norm", norm) != norm:
        raise ModelError(
            f"--backbone-from {path} was trained with norm={args.get('norm')}, not {norm}.",
            "Leave --norm unset to use the run's setting.",
        )
    contract = meta.get("input") or {}
    if contract.get("image_size") and int(contract["image_size"]) != image_side:
        log.warning("The backbone was trained on %s px images, %s is %d px.", contract["image_size"], where, image_side)
    model = create_for_images(architecture, image_side, where, num_classes=num_classes, **args)
    features = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    load_state_strict(model, features, source=str(path), skip_prefixes=("head.",))
    model.normalisation = str(contract.get("normalisation") or model.normalisation)
    model.pretrained = meta.get("pretrained")
    log.info("Backbone initialised from %s (%s).", meta.get("path"), arch)
    return model
