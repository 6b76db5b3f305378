"""Which trained run a command uses when none is named, and the record of that choice beside its output.

``cxr predict`` and ``cxr evaluate`` take ``--model`` / RUN; without one they use the most recently completed
run in ``$CXR_RUNS`` that can do the job, always saying which on stderr, and predict records it in
``<output>.model.json`` so a CSV can be traced to its weights later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cxr_tools import paths
from cxr_tools.errors import ConfigError
from cxr_tools.runtime.fs import atomic_write_json
from cxr_tools.runtime.rundir import now_iso
from cxr_tools.workspace.listing import latest_completed
from cxr_tools.workspace.names import TRAINING_KINDS, resolve_run

#: Runs that predict without a support set (MAML and Siamese runs adapt to one first).
PREDICTS_ALONE = ("train",)
LATEST = "the most recently completed run in $CXR_RUNS"


@dataclass(frozen=True)
class ModelChoice:
    """A run (or model folder) and where the choice came from: a flag, ``CXR_MODEL``, a config file or
    :data:`LATEST`."""

    path: Path
    source: str


def choose_run(
    value: str | os.PathLike[str] | None, source: str, *, kinds: tuple[str, ...], purpose: str
) -> ModelChoice:
    """``value`` (a path or run name) when given, else the latest completed run of ``kinds``.

    Raises:
        ConfigError: nothing named and no completed run of ``kinds`` in the workspace; ``purpose`` says what the
            run is for (``"--method auto needs a run"``) and the hint what to do.
    """
    if value is not None and str(value) != "":
        return ModelChoice(resolve_run(value), source)
    latest = latest_completed(kinds)
    if latest is None:
        raise ConfigError(
            f"{purpose}, and {paths.runs_root()} holds no completed {' / '.join(kinds)} run.",
            "Name one (a run directory or its name in $CXR_RUNS), or train one first.",
        )
    return ModelChoice(latest, LATEST)


def predict_kinds(with_support: bool) -> tuple[str, ...]:
    """The run kinds ``cxr predict`` can use: any with a support set, supervised ones without."""
    return TRAINING_KINDS if with_support else PREDICTS_ALONE


def choice_path(output: Path) -> Path:
    """Where :func:`record_choice` writes: ``<output>.model.json`` beside the output."""
    return output.with_name(output.name + ".model.json")


def record_choice(output: Path, choice: ModelChoice) -> Path:
    """Write ``<output>.model.json``: the model used (absolute path) and how it was chosen."""
    return atomic_write_json(
        choice_path(output),
        {"model": str(choice.path.resolve()), "chosen_by": choice.source, "output": output.name, "time": now_iso()},
    )
