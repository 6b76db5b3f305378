"""A zoo model for given images: the registry's ``create_model`` with the size checked first, or started from the
feature extractor of a trained run (``meta-train --init RUN``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr_tools.errors import ConfigError, ModelError


def check_model_name(name: str) -> None:
    """Refuse an unknown zoo model before any work (suggesting close names)."""
    from cxr_tools.models.registry import is_model, suggestion

    if not is_model(name):
        raise ModelError(f"Unknown model '{name}'.", suggestion(name))


def create_for_images(name: str, image_side: int, where: str, **overrides: Any) -> Any:
    """``create_model(name, **overrides)`` after checking that images of ``image_side`` px suit the model.

    ``where`` names the images in the error (e.g. ``cache PATH``).
    """
    from cxr_tools.models.registry import create_model, model_card

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
