"""Model lineage: what a run and every run it was initialised from trained on (docs/science.md, "lineage").

A few-shot score is honest only if no model in the chain that produced the weights ever saw a meta-test class
or a meta-test patient. ``model.json`` therefore carries, under ``lineage``, one record per run::

    {"version": 1, "run": NAME, "path": WHERE IT WAS TRAINED, "training": KIND,
     "cache": {"manifest_hash": ..., "preprocessing": {...}},
     "classes": [classes trained on: head labels, Siamese pair labels, MAML meta-train + meta-val classes],
     "pool": {"name": "all" | "meta-train" | "meta-train+meta-val", "meta_split": {...} | null,
              "pool_seed": int | null},
     "patients": {"count": N, "sha256": HASH},
     "parents": [the record of the run it was initialised from, recursively]}

The patient ids themselves (every patient of an image the run could read for training or validation) are kept
beside ``model.json`` in :data:`PATIENTS_FILE`, keyed by the hash of their sorted list, for the run and all its
ancestors: a run copied elsewhere, its parents deleted, stays self-describing, and sets shared by several
ancestors are stored once. Ids are compared as strings, so the check holds on any cache, whatever its hash.

Everything here works on plain values (patient ids, class names, ``model.json`` dicts); the data layer supplies
the ids (:func:`cxr_tools.data.splits.patients_of`), the engines decide what to refuse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_tools.errors import ModelError

LINEAGE_VERSION = 1
PATIENTS_FILE = "lineage_patients.json"
_PATIENTS_FORMAT = "cxr-lineage-patients"
_SHOW = 5


def trained_classes(meta: Mapping[str, Any]) -> list[str]:
    """Classes a run learned from, sorted: its head labels, Siamese pair labels, MAML meta-train / meta-val
    classes (meta-val classes pick the weights, so they count as seen)."""
    extra = dict(meta.get("extra") or {})
    out = {str(c) for c in meta.get("labels") or []} | {str(c) for c in extra.get("pair_labels") or []}
    split = extra.get("meta_split")
    if isinstance(split, Mapping):
        out |= {str(c) for key in ("train", "val") for c in split.get(key) or []}
    return sorted(out)


def patients_digest(patients: Iterable[str]) -> tuple[list[str], str]:
    """``(sorted unique ids, sha256)``: the hash of the newline-joined sorted ids, as strings."""
    ids = sorted({str(p) for p in patients})
    return ids, hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def write_lineage(
    model_dir: str | Path,
    meta: Mapping[str, Any],
    *,
    run: str | Path,
    patients: Iterable[str],
    pool: str = "all",
    meta_split: Mapping[str, Any] | None = None,
    pool_seed: int | None = None,
    parents: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Write ``MODEL_DIR/lineage_patients.json`` and return the run's lineage record (store it as
    ``meta["lineage"]``, before ``model.json`` is written).

    Args:
        model_dir: the model folder being written.
        meta: the run's model meta (``labels``, ``training``, ``cache_manifest_hash``, ``preprocessing``,
            ``extra``): classes and cache fingerprint come from it.
        run: the run directory (its name identifies the run in refusals).
        patients: patient ids of every image the run could read for training or validation.
        pool, meta_split, pool_seed: the pool it drew from (``all`` = the whole patient split).
        parents: model folders / run directories whose weights initialised the run.
    """
    ids, digest = patients_digest(patients)
    sets: dict[str, list[str]] = {digest: ids}
    records = []
    for parent in parents:
        record, parent_sets = read_lineage(parent)
        records.append(record)
        sets.update(parent_sets)
    record = {
        "version": LINEAGE_VERSION,
        "run": Path(run).name,
        "path": str(Path(run).resolve()),
        "training": meta.get("training"),
        "cache": {
            "manifest_hash": meta.get("cache_manifest_hash"),
            "preprocessing": dict(meta.get("preprocessing") or {}),
        },
        "classes": trained_classes(meta),
        "pool": {"name": pool, "meta_split": dict(meta_split) if meta_split else None, "pool_seed": pool_seed},
        "patients": {"count": len(ids), "sha256": digest},
        "parents": records,
    }
    from cxr_tools.runtime.fs import atomic_write_text

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": _PATIENTS_FORMAT, "version": LINEAGE_VERSION, "sets": dict(sorted(sets.items()))}
    atomic_write_text(out / PATIENTS_FILE, json.dumps(doc, separators=(",", ":")) + "\n")
    return record


def read_lineage(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``(record, patient sets)`` of a model folder or run directory, for a child run to copy.

    A parent made before lineage existed gets a record marked ``missing`` (the child still trains; evaluating
    it is refused until the parent is retrained or ``--allow-leak`` is passed).
    """
    from cxr_tools.models.checkpoints import read_model_meta

    meta = read_model_meta(model_dir)
    folder = Path(meta["path"])
    record = meta.get("lineage")
    if not isinstance(record, Mapping):
        run = folder.parent if folder.name == "model" else folder
        stub: dict[str, Any] = {"version": LINEAGE_VERSION, "run": run.name, "path": str(run.resolve())}
        return {**stub, "training": meta.get("training"), "missing": True, "parents": []}, {}
    return dict(record), load_patient_sets(folder)


def load_patient_sets(model_dir: str | Path) -> dict[str, list[str]]:
    """The patient sets of :data:`PATIENTS_FILE` in a model folder (empty when there is none)."""
    path = Path(model_dir) / PATIENTS_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read {path}: {exc}.", "The model folder is corrupt; retrain or re-copy it.") from exc
    if not isinstance(doc, Mapping) or doc.get("format") != _PATIENTS_FORMAT:
        raise ModelError(f"{path} is not a cxr-tools lineage patients file.", "Retrain or re-copy the run.")
    return {str(k): [str(p) for p in v] for k, v in dict(doc.get("sets") or {}).items()}


def walk(record: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], int]]:
    """Every record of a lineage with its depth (0 = the run itself), the run first, then its parents."""
    stack = [(record, 0)]
    while stack:
        node, depth = stack.pop(0)
        yield node, depth
        stack[0:0] = [(p, depth + 1) for p in node.get("parents") or [] if isinstance(p, Mapping)]


def recorded_pool_seed(meta: Mapping[str, Any]) -> int | None:
    """The pool seed a run drew its training images with (its lineage, else ``extra.pool_seed``), or None."""
    record = meta.get("lineage")
    seed = ((record.get("pool") or {}).get("pool_seed")) if isinstance(record, Mapping) else None
    if seed is None:
        seed = (meta.get("extra") or {}).get("pool_seed")
    return None if seed is None else int(seed)


def find_leak(
    meta: Mapping[str, Any],
    patient_sets: Mapping[str, Sequence[str]],
    test_classes: Iterable[str],
    test_patients: Iterable[str],
) -> str | None:
    """One line naming how the lineage of ``meta`` touches the meta-test split, or None when it does not.

    Checked per run of the lineage, the run itself first: a meta-test class among its trained classes, a
    patient shared with the meta-test pool, or a record that cannot be checked (no lineage; a patient set
    missing from, or altered in, :data:`PATIENTS_FILE`).
    """
    record = meta.get("lineage")
    classes = set(map(str, test_classes))
    if not isinstance(record, Mapping):
        own = sorted(set(trained_classes(meta)) & classes)
        what = f"; its own classes include meta-test class(es) {_few(own)}" if own else ""
        return f"the run has no lineage record (trained by an older cxr-tools): it cannot be checked{what}"
    test = set(map(str, test_patients))
    for node, depth in walk(record):
        who = _who(node, depth)
        if node.get("missing"):
            return f"{who} has no lineage record (trained by an older cxr-tools): it cannot be checked"
        leaked = sorted(set(map(str, node.get("classes") or [])) & classes)
        if leaked:
            return f"{who} trained on meta-test class(es) {_few(leaked)}"
        digest = str((node.get("patients") or {}).get("sha256") or "")
        ids = patient_sets.get(digest)
        if ids is None or patients_digest(ids)[1] != digest:
            return f"{who} lists its patients in {PATIENTS_FILE}, but they are missing or altered there"
        shared = len(test.intersection(ids))
        if shared:
            return f"{who} trained on {shared} patient(s) of the meta-test pool"
    return None


def _who(node: Mapping[str, Any], depth: int) -> str:
    where = f" ({node.get('training')}, trained in {node.get('path')})"
    if depth == 0:
        return f"run '{node.get('run')}'{where}"
    return f"ancestor run '{node.get('run')}'{where}"


def _few(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOW]) + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")
