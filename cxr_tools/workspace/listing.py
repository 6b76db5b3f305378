"""What the workspace holds: datasets, caches, runs and evaluations with their status, date and headline metric.

Read from the files each command already writes (``manifest.json`` of a cache, ``run.json`` and
``metrics.jsonl`` of a run, ``summary.json`` of an evaluation), never from a registry of its own, so a folder
copied in by hand or written by an older version is listed the same way. Also picks the run a command uses when
none is named (:func:`latest_completed`).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_tools import paths
from cxr_tools.errors import ModelError
from cxr_tools.runtime.rundir import RunDir, live_status, read_run_info
from cxr_tools.workspace.names import TRAINING_KINDS, caches, datasets, run_dirs

#: The validation metric each training command selects its weights by, best first.
_HEADLINE = {"train": "val_auc", "train-siamese": "val_pair_auc", "meta-train": "val_auc"}


@dataclass(frozen=True)
class Entry:
    """One thing in the workspace.

    Attributes:
        kind: ``dataset``, ``cache``, a training command (``train``, ``train-siamese``, ``meta-train``) or
            ``evaluate``.
        name: its name relative to its root (what the commands accept in place of the path).
        status: ``completed``, ``running``, ``interrupted``, ``failed`` or ``incomplete`` (a cache or evaluation
            without its final file: interrupted or still running).
        date: when it finished (else started), ISO-8601 UTC.
        metric: the headline number: a run's best validation metric, an evaluation's mean AUC, a cache's size.
        path: where it is.
    """

    kind: str
    name: str
    status: str
    date: str | None
    metric: str | None
    path: Path


def entries() -> list[Entry]:
    """Everything in the workspace: datasets, caches, then runs with their evaluations, each by name."""
    return [*_datasets(), *_caches(), *_runs()]


def _datasets() -> Iterator[Entry]:
    for path in datasets():
        status = "completed" if any(path.iterdir()) else "incomplete"
        yield Entry("dataset", path.name, status, _mtime(path), None, path)


def _caches() -> Iterator[Entry]:
    complete = {p.name for p in caches()}
    for path in caches(complete=False):
        if path.name not in complete:
            yield Entry("cache", path.name, "incomplete", _mtime(path), None, path)
            continue
        manifest = _json(path / "manifest.json")
        counts = manifest.get("counts") or {}
        size = manifest.get("image_size") or []
        metric = f"{counts.get('images', '?')} images, {size[0] if size else '?'}px"
        yield Entry("cache", path.name, "completed", _iso(manifest.get("created")) or _mtime(path), metric, path)


def _runs() -> Iterator[Entry]:
    root = paths.runs_root()
    for path in run_dirs():
        info = read_run_info(path) or {}
        kind = str(info.get("kind") or path.parent.name)
        metric = _best(path, kind)
        if info.get("algorithm") not in (None, "maml"):  # meta-train: fomaml or protonet (methods/protonet.py)
            metric = " ".join([str(info["algorithm"]), *([metric] if metric else [])])
        collapse = info.get("collapse")
        if isinstance(collapse, dict):  # meta-train: the run collapsed to the label prior (methods/collapse.py)
            metric = "; ".join([*([metric] if metric else []), f"COLLAPSED at step {collapse.get('from_step')}"])
        yield Entry(
            kind,
            path.relative_to(root).as_posix(),
            str(live_status(path, info) or "incomplete"),
            info.get("end_time") or info.get("start_time"),
            metric,
            path,
        )
        yield from _evaluations(sorted(path.glob("eval*")), root)
    yield from _evaluations(sorted(p for p in (root / "evaluate").glob("*") if p.is_dir()), root)


def _evaluations(folders: Iterable[Path], root: Path) -> Iterator[Entry]:
    for path in folders:
        summary_file = path / "summary.json"
        if not path.is_dir() or not (summary_file.is_file() or (path / "progress.json").is_file()):
            continue
        name = path.relative_to(root).as_posix()
        if not summary_file.is_file():
            yield Entry("evaluate", name, "incomplete", _mtime(path), None, path)
            continue
        summary = _json(summary_file)
        auc = ((summary.get("overall") or {}).get("auc") or {}).get("mean")
        metric = f"AUC {auc:.3f}" if isinstance(auc, (int, float)) else None
        yield Entry("evaluate", name, "completed", _mtime(summary_file), metric, path)


def _best(run: Path, kind: str) -> str | None:
    key = _HEADLINE.get(kind)
    values = (
        [r[key] for r in RunDir(run, writable=False).read_metrics() if isinstance(r.get(key), (int, float))]
        if key
        else []
    )
    return f"best {key} {max(values):.3f}" if values else None


def latest_completed(kinds: Iterable[str] = TRAINING_KINDS) -> Path | None:
    """The most recently completed run of one of ``kinds`` in ``$CXR_RUNS`` (by its end time, then by when its
    model was written: ``end_time`` has whole seconds, and short runs end within the same one), or None."""
    done = []
    for path in run_dirs(kinds):
        info = read_run_info(path) or {}
        card = path / "model" / "model.json"
        if info.get("status") == "completed" and card.is_file():
            done.append((str(info.get("end_time") or ""), card.stat().st_mtime_ns, path.as_posix(), path))
    return max(done)[3] if done else None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is unreadable ({exc}).", "Delete the folder it belongs to, or redo it.") from exc
    return data if isinstance(data, dict) else {}


def _iso(text: Any) -> str | None:
    """A manifest's ``created`` (``2026-01-02T03:04:05+0000``) in run.json's form (``...+00:00``)."""
    try:
        return _dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").isoformat()
    except ValueError:
        return None


def _mtime(path: Path) -> str:
    stamp = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc)
    return stamp.replace(microsecond=0).isoformat()
