"""Engine of ``cxr models``: the zoo's model cards and the foundation-encoder presets (with their data cards), all,
filtered by a pattern, or one in detail. Presets are described from :mod:`cxr_tools.models.encoders` alone: listing
them needs neither their files nor transformers."""

from __future__ import annotations

import dataclasses
import fnmatch

from cxr_tools.errors import ModelError
from cxr_tools.models.encoders import PRESETS, EncoderPreset
from cxr_tools.models.registry import ModelCard, is_model, list_models, model_card, suggestion
from cxr_tools.runtime.progress import Progress, null_progress


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    """What to list.

    Attributes:
        pattern: a model name (shows that card in detail), a wildcard (``resnet*``) or a substring;
            ``None`` lists the whole zoo.
    """

    pattern: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelsResult:
    """The model cards and encoder presets asked for; ``detail`` when one model or preset was named exactly."""

    models: tuple[ModelCard, ...]
    detail: bool
    encoders: tuple[EncoderPreset, ...] = ()


def list_zoo(config: ModelsConfig, progress: Progress | None = None) -> ModelsResult:
    """Model cards matching ``config.pattern``; a :class:`ModelError` with close names when none match."""
    pattern = config.pattern or None
    if pattern is not None and pattern in PRESETS:
        return ModelsResult(models=(), detail=True, encoders=(PRESETS[pattern],))
    if pattern is not None and is_model(pattern):
        return ModelsResult(models=(model_card(pattern),), detail=True)
    names = list_models(pattern)
    glob = pattern if pattern is None or any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    encoders = tuple(p for name, p in PRESETS.items() if glob is None or fnmatch.fnmatchcase(name, glob))
    if not names and not encoders:
        what = "matches" if any(ch in str(pattern) for ch in "*?[") else "is called or contains"
        raise ModelError(f"No model {what} '{pattern}'.", suggestion(str(pattern)))
    cards = []
    with null_progress(progress).task("model cards", total=len(names)) as task:
        for name in names:
            cards.append(model_card(name))
            task.advance()
    return ModelsResult(models=tuple(cards), detail=False, encoders=encoders)
