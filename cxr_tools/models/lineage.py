"""Model lineage: what a run and every run it was initialised from trained on (docs/science.md, "lineage").

A few-shot score is honest only if no model in the chain that produced the weights ever saw a meta-test class
or a meta-test patient. ``model.json`` therefore carries, under ``lineage``, one record per run::

    {"version": 1, "run": NAME, "path": WHERE IT WAS TRAINED, "training": KIND,
     "cache": {"manifest_hash": ..., "preprocessing": {...}},
     "classes": [classes trained on: head labels, Siamese pair labels, MAML meta-train + meta-val classes],
     "pool": {"name": "all" | "meta-train" | "meta-train+meta-val", "meta_split": {...} | null,
              "pool_seed": int | null},
     "patients": {"count": N, "sha256": HASH},
     "weights": the data card of the external weights its model was built with (:mod:`.datacards`) | null,
     "parents": [the record of the run it was initialised from, recursively]}

The patient ids themselves (every patient of an image the run could read for training or validation) are kept
beside ``model.json`` in :data:`PATIENTS_FILE`, keyed by the hash of their sorted list, for the run and all its
ancestors: a run copied elsewhere, its parents deleted, stays self-describing, and sets shared by several
ancestors are stored once. Ids are compared as strings, so the check holds on any cache, whatever its hash.

Comparisons are canonical. Class names compare by :func:`cxr_tools.vocabulary.label_key` (``PNEUMONIA`` =
``Pneumonia``, ``Pleural Effusion`` = ``Effusion``). Patient ids compare by :func:`patient_key`: case-folded,
each run of digits without its leading zeros, because sources write one patient differently (NIH pads its
numeric ids to 8 digits, ``00000001``; the DICOM source keeps ``PatientID`` as written, often ``1``; CheXpert
writes ``patient00001``). The stored ids stay as the sources wrote them; only the comparison is canonical. A cache
of several datasets qualifies its ids (``nih:00000001``): qualified ids of two datasets are two patients, and an
unqualified id is compared with its id in every dataset (:func:`qualified_patient_key`).
External weights compare by their data card: weights whose labels taught a meta-test class leak it.

Everything here works on plain values (patient ids, class names, ``model.json`` dicts); the data layer supplies
the ids (:func:`cxr_tools.data.splits.patients.patients_of`), the engines decide what to refuse.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_tools.errors import ModelError
from cxr_tools.models.datacards import card_record, describe, recorded_classes
from cxr_tools.vocabulary import label_key

# 2: records carry ``weights`` (the data card of the external weights the run started from).
LINEAGE_VERSION = 2
PATIENTS_FILE = "lineage_patients.json"
_PATIENTS_FORMAT = "cxr-lineage-patients"
_SHOW = 5
_DIGITS = re.compile(r"\d+")


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


EMPTY_PATIENTS = patients_digest(())[1]


def encoder_record(name: str, source: str) -> dict[str, Any]:
    """The lineage record of a pretrained encoder evaluated without a run of this tool: no classes, no patients of
    any cache, and the encoder's data card (:func:`~cxr_tools.models.datacards.card_record`) as its weights."""
    return {
        "version": LINEAGE_VERSION,
        "run": name,
        "path": source,
        "training": "pretrained encoder",
        "cache": {"manifest_hash": None, "preprocessing": {}},
        "classes": [],
        "pool": {"name": "none", "meta_split": None, "pool_seed": None},
        "patients": {"count": 0, "sha256": EMPTY_PATIENTS},
        "weights": card_record(name),
        "parents": [],
    }


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
            ``extra``, ``pretrained``): classes, cache fingerprint and external weights come from it.
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
        "weights": card_record(meta.get("pretrained")),
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
    it is refused until the parent is retrained or ``--allow-leak`` is passed). A version-1 record (made before
    records named their external weights) gets the card of the weights its ``model.json`` names.
    """
    from cxr_tools.models.checkpoints import read_model_meta

    meta = read_model_meta(model_dir)
    folder = Path(meta["path"])
    record = meta.get("lineage")
    if not isinstance(record, Mapping):
        run = folder.parent if folder.name == "model" else folder
        stub: dict[str, Any] = {"version": LINEAGE_VERSION, "run": run.name, "path": str(run.resolve())}
        return {**stub, "training": meta.get("training"), "missing": True, "parents": []}, {}
    record = dict(record)
    if "weights" not in record:
        record["weights"] = card_record(meta.get("pretrained"))
    return record, load_patient_sets(folder)


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


def patient_key(patient: str) -> str:
    """The key two patient ids are compared by: stripped, case-folded, leading zeros dropped from every run of
    digits (``"00000001"`` and ``"1"`` are one NIH patient; ``"patient00001"`` = ``"Patient1"``)."""
    return _DIGITS.sub(lambda m: m.group(0).lstrip("0") or "0", str(patient).strip().casefold())


_QUALIFIED = re.compile(r"^([a-z][a-z0-9-]*):(.+)$")


def qualified_patient_key(patient: str) -> tuple[str | None, str]:
    """``(dataset, key)`` of a patient id: a cache of several datasets writes ``DATASET:ID``
    (:mod:`cxr_tools.data.caches.datasets`); a one-dataset cache writes ``ID`` (dataset None). ``key`` is
    :func:`patient_key` of the id."""
    m = _QUALIFIED.match(str(patient).strip())
    return (m.group(1), patient_key(m.group(2))) if m else (None, patient_key(patient))


def _same_patient(patient: str, test_ids: Mapping[str, Mapping[str | None, str]]) -> str | None:
    """The meta-test id (as written) that ``patient`` is, or None. Qualified ids of two datasets never match; an
    unqualified id (from a one-dataset cache, whose dataset the id does not say) matches its id in any dataset,
    so a model trained on one dataset is checked against a merged cache, and the other way round, conservatively."""
    dataset, key = qualified_patient_key(patient)
    found = test_ids.get(key)
    if not found:
        return None
    if dataset is None:
        return next(iter(found.values()))
    return found.get(dataset) or found.get(None)


def find_leak(
    meta: Mapping[str, Any],
    patient_sets: Mapping[str, Sequence[str]],
    test_classes: Iterable[str],
    test_patients: Iterable[str],
) -> str | None:
    """One line naming how the lineage of ``meta`` touches the meta-test split, or None when it does not.

    Checked per run of the lineage, the run itself first: a meta-test class among its trained classes, external
    weights whose data card lists a meta-test class among the classes their labels taught, a patient shared with
    the meta-test pool, or a record that cannot be checked (no lineage; external weights without a card; a
    patient set missing from, or altered in, :data:`PATIENTS_FILE`). Classes and patients compare canonically
    (module docstring).
    """
    record = meta.get("lineage")
    classes = {label_key(c): str(c) for c in test_classes}
    test_ids: dict[str, dict[str | None, str]] = {}  # canonical id -> dataset (None: unqualified) -> id as written
    for p in test_patients:
        dataset, key = qualified_patient_key(p)
        test_ids.setdefault(key, {}).setdefault(dataset, str(p))
    if not isinstance(record, Mapping):
        own = _overlap(trained_classes(meta), classes)
        what = f"; its own classes include meta-test class(es) {_few(own)}" if own else ""
        return f"the run has no lineage record (trained by an older cxr-tools): it cannot be checked{what}"
    for node, depth in walk(record):
        who = _who(node, depth)
        if node.get("missing"):
            return f"{who} has no lineage record (trained by an older cxr-tools): it cannot be checked"
        leaked = _overlap(node.get("classes") or [], classes)
        if leaked:
            return f"{who} trained on meta-test class(es) {_few(leaked)}"
        leak = _weights_leak(node, depth, meta, classes, who)
        if leak:
            return leak
        digest = str((node.get("patients") or {}).get("sha256") or "")
        ids = patient_sets.get(digest)
        if ids is None and digest == EMPTY_PATIENTS:  # trained on no patient of any cache (a pretrained encoder)
            ids = []
        if ids is None or patients_digest(ids)[1] != digest:
            return f"{who} lists its patients in {PATIENTS_FILE}, but they are missing or altered there"
        shared = [(m, str(p)) for p in ids if (m := _same_patient(p, test_ids)) is not None]
        if shared:
            same = next(((a, b) for a, b in shared if a != b), None)
            how = f" (ids compared canonically: its '{same[1]}' is '{same[0]}' here)" if same else ""
            return f"{who} trained on {len(shared)} patient(s) of the meta-test pool{how}"
    return None


def external_weights(record: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(run, data card)`` of every external weight set in a lineage record, the run itself first."""
    return [
        (str(node.get("run")), node["weights"]) for node, _ in walk(record) if isinstance(node.get("weights"), Mapping)
    ]


def pretraining_notes(meta: Mapping[str, Any], source: Any) -> list[str]:
    """Lines for an evaluation's outputs: external weights in the lineage of ``meta`` that were trained on images
    of the evaluated dataset without labels for its meta-test classes (those are refused by :func:`find_leak`).
    Not a leak: the encoder has seen the images, not the classes.

    ``source`` is the evaluated cache's ``manifest["source"]`` (its ``kind``: ``nih``, ``chexpert`` ...)."""
    record = meta.get("lineage")
    kinds = {source.get("kind")} if isinstance(source, Mapping) else {source}
    if isinstance(source, Mapping) and source.get("kind") == "merged":  # a cache of several datasets: each one's
        kinds = {d.get("kind") for d in source.get("datasets") or [] if isinstance(d, Mapping)}
    kinds.discard(None)
    if not kinds or not isinstance(record, Mapping):
        return []
    if "weights" not in record and meta.get("pretrained"):
        record = {**record, "weights": card_record(meta.get("pretrained"))}
    notes = []
    encoder = record.get("training") == "pretrained encoder"
    for run, card in external_weights(record):
        seen = sorted({str(d.get("dataset")) for d in card.get("data") or [] if d.get("source") in kinds})
        who = "the encoder is" if encoder else f"run '{run}' started from"
        if seen:
            notes.append(
                f"{who} {card.get('title') or card.get('name')}, trained on images of "
                f"{', '.join(seen)} as evaluated here (with labels for other classes than the meta-test ones, or "
                "none): its encoder has seen these images"
            )
    return notes


def _weights_leak(
    node: Mapping[str, Any], depth: int, meta: Mapping[str, Any], classes: Mapping[str, str], who: str
) -> str | None:
    """How the external weights a lineage node started from touch the meta-test classes (None: they do not)."""
    if "weights" in node:
        card = node.get("weights")
    elif depth == 0:  # a version-1 record: model.json names the run's weights
        card = card_record(meta.get("pretrained"))
    else:
        return (
            f"{who} was recorded by an older cxr-tools that did not name its pretrained weights: it cannot be checked"
        )
    if not isinstance(card, Mapping):
        return None
    if card.get("data") is None:
        return f"{who} started from weights '{card.get('name')}', which have no data card: it cannot be checked"
    leaked = _overlap(recorded_classes(card), classes)
    if leaked:
        return f"{who} started from {describe(card)}, whose labels taught meta-test class(es) {_few(leaked)}"
    return None


def _overlap(trained: Iterable[Any], classes: Mapping[str, str]) -> list[str]:
    """The meta-test classes (their evaluated spelling, sorted) that ``trained`` names in any spelling."""
    return sorted({classes[k] for c in trained if (k := label_key(str(c))) in classes})


def _who(node: Mapping[str, Any], depth: int) -> str:
    where = f" ({node.get('training')}, trained in {node.get('path')})"
    if depth == 0:
        return f"run '{node.get('run')}'{where}"
    return f"ancestor run '{node.get('run')}'{where}"


def _few(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOW]) + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")
