"""Names in the workspace: what a dataset, cache or run name (or no name at all) means, and the default outputs.

The model is nnU-Net's raw / preprocessed / results roots: ``$CXR_DATA/<dataset>``, ``$CXR_CACHE/<cache>`` and
``$CXR_RUNS/<command>/<run>``. A value that exists as a path is that path (explicit paths always win, so scripts
that pass paths keep working); a bare name is looked up under its root; no value at all means the only candidate
there. An unknown name or a default with several candidates is a usage error that lists what exists.

Default outputs are named from the settings that define them, so the same command finds the same folder again
(a rerun resumes the run, as SLURM requeue needs) and a changed setting gets a new one. Settings that do not
change the result (device, workers, threads, AMP, checkpoint and log cadence, resume/overwrite, output options:
``runtime.rundir.RESUME_MUTABLE_KEYS`` plus :data:`NOT_IN_NAME`) are left out of the name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cxr_tools import paths
from cxr_tools.errors import ConfigError, CxrError, WorkspaceError
from cxr_tools.runtime.rundir import RESUME_MUTABLE_KEYS

#: Training commands whose run directories live in ``$CXR_RUNS/<command>/``.
TRAINING_KINDS = ("train", "train-siamese", "meta-train")
#: Parameters that never name an output: where it goes, how it is shown, and the inputs named otherwise.
NOT_IN_NAME = frozenset(
    {"output", "config", "json_output", "quiet", "cache", "data", "run", "src", "merge", "chunk_size", "commit_seconds"}
    | {"dry_run"}
)
_HASH_CHARS = 8


def slug(text: str) -> str:
    """``text`` as a folder-name part: letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def significant(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define an output: those differing from their built-in default, minus
    :data:`NOT_IN_NAME` and the resume-mutable keys. Only changed values count, so an option added later with a
    default does not rename (and so orphan) the runs made before it."""
    skip = NOT_IN_NAME | RESUME_MUTABLE_KEYS
    return {k: _plain(v) for k, v in sorted(params.items()) if k not in skip and _plain(v) != _plain(defaults.get(k))}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of a settings mapping (sorted JSON, SHA-256)."""
    text = json.dumps(_plain(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# --- resolving names ------------------------------------------------------------------------------------
def datasets() -> list[Path]:
    """Dataset folders in ``$CXR_DATA`` (every visible sub-folder), by name."""
    return _children(paths.data_root())


def caches(complete: bool = True) -> list[Path]:
    """Cache folders in ``$CXR_CACHE`` (complete ones: with ``manifest.json``), by name."""
    return [p for p in _children(paths.cache_root()) if not complete or (p / "manifest.json").is_file()]


def _children(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_dataset(value: str | os.PathLike[str] | None) -> Path:
    """The dataset directory ``cxr preprocess`` reads: a path, a name in ``$CXR_DATA``, or the only one there."""
    return _resolve(value, paths.data_root(), datasets(), "dataset", "cxr download synthetic", "SRC")


def resolve_cache(value: str | os.PathLike[str] | None, flag: str = "CACHE") -> Path:
    """A cache: a path, a name in ``$CXR_CACHE``, or the only complete cache there."""
    return _resolve(value, paths.cache_root(), caches(), "cache", "cxr preprocess", flag)


def resolve_run(value: str | os.PathLike[str], kinds: Iterable[str] = TRAINING_KINDS) -> Path:
    """A run directory: a path, or a name in ``$CXR_RUNS`` (``meta-train/NAME`` or a ``NAME`` unique there)."""
    path = Path(value).expanduser()
    root = paths.runs_root()
    if path.exists() or path.is_absolute() or str(value).startswith("."):
        return path
    found = [p for p in [root / path, *(root / kind / path for kind in kinds)] if (p / "run.json").is_file()]
    if len(found) == 1:
        return found[0]
    existing = [_rel(p, root) for p in run_dirs(kinds)]
    if not existing:  # an empty workspace: the path as given, for the command's own "does not exist"
        return path
    if found:
        raise WorkspaceError(
            f"Several runs are named '{value}': {_listed(_rel(p, root) for p in found)}.", "Name one as KIND/NAME."
        )
    raise WorkspaceError(f"No run named '{value}' in {root} (and no such path).", f"Runs there: {_listed(existing)}.")


def run_dirs(kinds: Iterable[str] = TRAINING_KINDS) -> list[Path]:
    """Run directories (with ``run.json``) in ``$CXR_RUNS/<kind>/``."""
    root = paths.runs_root()
    return [p for kind in kinds for p in _children(root / kind) if (p / "run.json").is_file()]


def _resolve(
    value: str | os.PathLike[str] | None, root: Path, candidates: list[Path], what: str, maker: str, arg: str
) -> Path:
    names = [p.name for p in candidates]
    if value is None or str(value) == "":
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ConfigError(f"No {what} given and none in {root}.", f"Pass {arg}, or make one first ({maker}).")
        raise WorkspaceError(f"No {what} given and {len(names)} in {root}: {_listed(names)}.", f"Name one as {arg}.")
    path = Path(value).expanduser()
    if path.exists() or not _is_name(str(value)):
        return path
    if (root / path).is_dir():
        return root / path
    if not candidates:  # nothing to list: the path as given, for the engine's own "does not exist"
        return path
    raise WorkspaceError(f"No {what} named '{value}' in {root} (and no such path).", f"Existing: {_listed(names)}.")


def _is_name(text: str) -> bool:
    return not (text.startswith((".", "~")) or os.sep in text or (os.altsep or os.sep) in text)


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --- default outputs ------------------------------------------------------------------------------------
def dataset_dir(name: str) -> Path:
    """Where ``cxr download NAME`` writes without ``--output``: ``$CXR_DATA/NAME``."""
    return writable(paths.data_root()) / slug(name)


def cache_dir(dataset: str, settings: Mapping[str, Any]) -> Path:
    """``$CXR_CACHE/<dataset>-<size>px[-<format>][-<views>][-<crop>][-noclahe][-<shard>][-h<hash>]``.

    ``settings`` are the :func:`significant` ones; the common ones are spelled out, every other changed setting
    (CLAHE parameters, brightness, seed, fractions, source, ...) adds a hash, so two settings never share a cache.
    """
    rest = dict(settings)
    parts = [slug(dataset), f"{rest.pop('size', 256)}px"]
    for key in ("format", "views", "crop"):
        if key in rest:
            parts.append(slug(str(rest.pop(key))))
    if rest.pop("clahe", True) is False:
        parts.append("noclahe")
    shard = rest.pop("shard", None)
    if shard is not None:
        parts.append("shard-" + slug(_slurm_shard(str(shard))))
    if rest:
        parts.append("h" + settings_hash(rest))
    return writable(paths.cache_root()) / "-".join(parts)


def _slurm_shard(text: str) -> str:
    if text != "slurm":
        return text
    env = os.environ
    return f"{env.get('SLURM_ARRAY_TASK_ID', 'x')}of{env.get('SLURM_ARRAY_TASK_COUNT', 'x')}"


def run_dir(kind: str, cache: Path, label: str, settings: Mapping[str, Any]) -> Path:
    """``$CXR_RUNS/<kind>/<cache>-<label>-<hash>``: the hash covers the command, the cache's absolute path and
    the :func:`significant` settings, so the same command (whatever the cwd or the way the cache was named)
    comes back to the same folder and any changed setting goes to another."""
    digest = settings_hash({"kind": kind, "cache": str(Path(cache).resolve()), "settings": settings})
    return writable(paths.runs_root()) / kind / f"{slug(Path(cache).name)}-{slug(label)}-{digest}"


def writable(root: Path) -> Path:
    """``root``, created if needed; one clear line when the workspace cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable_dir = os.access(root, os.W_OK | os.X_OK)
        reason = "permission denied"
    except OSError as exc:
        writable_dir, reason = False, exc.strerror or str(exc)
    if not writable_dir:
        raise CxrError(
            f"The workspace folder {root} is not writable ({reason}).",
            "Set CXR_HOME (or CXR_DATA / CXR_CACHE / CXR_RUNS) to a folder you can write, or pass -o/--output.",
        )
    return root
