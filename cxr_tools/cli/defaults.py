"""The workspace defaults of the path-taking commands: one call at the top of each command body.

Each function reads the command's parameters (``ctx.params``, already layered: defaults < user config <
``--config`` < flags), turns a dataset / cache / run *name* or a missing path into a path with
:mod:`cxr_tools.workspace`, writes it back into ``ctx.params`` (so ``config_from_params`` and the saved config see
the resolved path) and says on stderr what it chose. A path given explicitly is used as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cxr_tools.cli.common import config_source

if TYPE_CHECKING:
    from cxr_tools.workspace import ModelChoice

#: evaluate methods that need no trained run.
RUNLESS_METHODS = ("scratch", "pixels")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _significant(ctx: typer.Context) -> dict[str, Any]:
    from cxr_tools import workspace

    defaults = {p.name: p.default for p in ctx.command.params if p.name is not None}
    return workspace.significant(ctx.params, defaults)


def download_dest(ctx: typer.Context, dataset: str) -> None:
    """``--output`` of ``cxr download NAME``, else ``$CXR_DATA/NAME``."""
    from cxr_tools import workspace

    if ctx.params.get("output") is None:
        ctx.params["output"] = workspace.dataset_dir(dataset)
        _say(f"Dataset folder: {ctx.params['output']}")


def preprocess_paths(ctx: typer.Context) -> None:
    """SRC as a path or dataset name (or the only dataset); ``-o`` else ``$CXR_CACHE/<dataset>-<size>px...``.

    With ``--merge`` SRC are the shard caches (paths or cache names) and ``-o`` is required: the merged cache
    is named by the user, not derived from one shard.
    """
    from cxr_tools import workspace

    src = list(ctx.params.get("src") or [])
    if ctx.params.get("merge"):
        ctx.params["src"] = [workspace.resolve_cache(s, "SRC") for s in src]
        if ctx.params.get("output") is None:
            raise typer.BadParameter("--merge needs -o/--output: the merged cache's directory.", param_hint="'-o'")
        return
    resolved = [workspace.resolve_dataset(s) for s in src] or [workspace.resolve_dataset(None)]
    ctx.params["src"] = resolved
    if not src or resolved[0] != Path(src[0]).expanduser():
        _say(f"Dataset: {resolved[0]}")
    if ctx.params.get("output") is None and len(resolved) == 1:
        ctx.params["output"] = workspace.cache_dir(resolved[0].name, _significant(ctx))
        _say(f"Cache: {ctx.params['output']}")


def _cache(ctx: typer.Context, name: str, flag: str) -> Path:
    from cxr_tools import workspace

    given = ctx.params.get(name)
    cache = workspace.resolve_cache(given, flag)
    if given is None or cache != Path(given).expanduser():
        _say(f"Cache: {cache}")
    ctx.params[name] = cache
    return cache


def training_paths(ctx: typer.Context, kind: str, label: str) -> None:
    """CACHE as a path or cache name (or the only cache); ``-o`` else ``$CXR_RUNS/<kind>/<cache>-<label>-<hash>``
    (same command, same folder: a rerun resumes it)."""
    from cxr_tools import workspace

    settings = _significant(ctx)
    cache = _cache(ctx, "cache", "CACHE")
    if ctx.params.get("output") is None:
        ctx.params["output"] = workspace.run_dir(kind, cache, label, settings)
        # the run's saved config names the cache as the hash does, so `cxr meta-train NAME` resumes the run
        # `cxr meta-train` or `cxr meta-train ./NAME` started
        ctx.params["cache"] = cache.resolve()
        _say(f"Run directory: {ctx.params['output']}")


def evaluate_paths(ctx: typer.Context) -> None:
    """``--data`` as a path or cache name (or the only cache); RUN as a path or run name, else the latest
    completed run (not for the run-less methods, nor with a foundation encoder as ``--backbone``); ``-o`` of a
    run-less evaluation else ``$CXR_RUNS/evaluate/<cache>-<method>-<N>w<K>s-<hash>`` (with a run, the engine's
    ``RUN/eval``)."""
    from cxr_tools import workspace

    settings = _significant(ctx)
    method = str(ctx.params.get("method"))
    run = ctx.params.get("run")
    from cxr_tools.models.encoders import is_encoder

    encoder = is_encoder(ctx.params.get("backbone"))  # --backbone hf:... / a preset: the encoder is evaluated
    if run is not None or (method not in RUNLESS_METHODS and not encoder):
        choice = workspace.choose_run(
            run, config_source(ctx, "run"), kinds=workspace.TRAINING_KINDS, purpose=f"--method {method} needs a run"
        )
        if run is None or choice.path != Path(run).expanduser():  # chosen or looked up: say which
            _say(f"Run: {choice.path} ({'from ' if choice.source != workspace.LATEST else ''}{choice.source})")
        ctx.params["run"] = choice.path
    data = _cache(ctx, "data", "--data")
    if ctx.params.get("run") is None and ctx.params.get("output") is None:
        label = f"{method}-{ctx.params.get('ways')}w{ctx.params.get('shots')}s"
        ctx.params["output"] = workspace.run_dir("evaluate", data, label, settings)
        ctx.params["data"] = data.resolve()  # as in training_paths: named as the hash names it
        _say(f"Evaluation directory: {ctx.params['output']}")


def predict_model(ctx: typer.Context) -> ModelChoice:
    """``--model`` (flag, ``CXR_MODEL``, a config file), else the latest completed run that can predict (any
    run with ``--support``, a supervised one without); said on stderr, recorded by the caller beside the CSV."""
    from cxr_tools import workspace

    kinds = workspace.predict_kinds(ctx.params.get("support") is not None)
    purpose = "No --model given" + ("" if ctx.params.get("support") is not None else " (and no --support)")
    choice = workspace.choose_run(ctx.params.get("model"), config_source(ctx, "model"), kinds=kinds, purpose=purpose)
    _say(f"Model: {choice.path} ({'from ' if choice.source != workspace.LATEST else ''}{choice.source})")
    ctx.params["model"] = choice.path
    return choice
