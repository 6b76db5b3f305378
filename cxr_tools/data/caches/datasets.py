"""Caches that hold several datasets: ``cxr preprocess --merge NIH_CACHE CHEXPERT_CACHE -o MERGED``.

Each input is a complete cache of one dataset (or an earlier merge), all made with the same image operations. The
merged cache is an ordinary cache (docs/design.md, "Caches of several datasets") with three additions, so that
everything downstream works across sources without knowing it:

* a ``dataset`` column naming where each row came from (:func:`dataset_name`: the source kind, ``nih``,
  ``chexpert``, ``dicom``, ``folder``, and ``synthetic-nih`` / ``synthetic-chexpert`` for the phantom layouts);
* dataset-qualified ids: ``image_id``, ``patient_id`` and ``study`` become ``DATASET:ID``, so patient ``1`` of NIH
  and patient ``1`` of another dataset are two patients: episodes, pools and lineage, which all go by patient id,
  stay patient-disjoint across datasets;
* canonical labels: every dataset's label columns renamed by :func:`cxr_tools.vocabulary.canonical_label`
  (CheXpert's ``Pleural Effusion`` is NIH's ``Effusion``) and joined; a class one dataset does not label is empty
  (not mentioned) on its rows.

Each dataset keeps its own patient-disjoint train / val / test split (qualified ids cannot collide, so the union
is patient-disjoint too). Images are copied in blocks, memory stays flat, the manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools import __version__
from cxr_tools.data.caches import format as cache_mod
from cxr_tools.data.caches.shards import copy_images
from cxr_tools.errors import CacheError
from cxr_tools.runtime.progress import Progress, null_progress
from cxr_tools.vocabulary import canonical_label

#: The columns whose values are qualified with the dataset name in a cache of several datasets.
QUALIFIED_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "study")


def dataset_name(manifest: Mapping[str, Any]) -> str:
    """The name rows of a one-dataset cache get in a merged cache: its source kind, the phantom's layout added."""
    source = manifest.get("source") or {}
    kind = str(source.get("kind") or "cache")
    if kind == "synthetic":
        layout = "nih" if str(source.get("metadata_file") or "").startswith("Data_Entry") else "chexpert"
        return f"synthetic-{layout}"
    return kind


def qualify(dataset: str, value: str) -> str:
    """``DATASET:ID``, the form ids take in a cache of several datasets."""
    return f"{dataset}:{value}"


def unlabelled_classes(manifest: Mapping[str, Any], classes: Sequence[str]) -> dict[str, list[str]]:
    """``{dataset: classes it does not label}`` among ``classes`` for a cache of several datasets (empty for one
    dataset): on those rows such a class is empty, which training and the samplers read as "not positive", so those
    rows can be drawn as its negatives although nobody looked for that finding."""
    source = manifest.get("source")
    if not isinstance(source, Mapping) or source.get("kind") != "merged":
        return {}
    missing = {}
    for record in source.get("datasets") or []:
        labelled = {canonical_label(str(label)) for label in record.get("labels") or []}
        lacking = [c for c in classes if canonical_label(c) not in labelled]
        if lacking:
            missing[str(record.get("name"))] = lacking
    return missing


def _datasets_of(reader: cache_mod.CacheReader) -> list[str]:
    if cache_mod.DATASET_COLUMN in reader.index.columns:
        return sorted(set(reader.index[cache_mod.DATASET_COLUMN].astype(str)))
    return [dataset_name(reader.manifest)]


def _source_records(reader: cache_mod.CacheReader) -> list[dict[str, Any]]:
    """What the merged manifest records of each dataset an input holds (an earlier merge: its own records)."""
    source = dict(reader.manifest.get("source") or {})
    if source.get("kind") == "merged":
        return [dict(d) for d in source.get("datasets") or []]
    counts = reader.manifest.get("counts") or {}
    return [
        {
            "name": dataset_name(reader.manifest),
            **{k: source.get(k) for k in ("kind", "root", "metadata_file", "metadata_sha256", "views")},
            "cache": str(reader.path.resolve()),
            "inputs_sha256": reader.manifest.get("inputs_sha256"),
            cache_mod.PIXELS_DIGEST: reader.manifest.get(cache_mod.PIXELS_DIGEST),
            "labels": list(reader.labels),
            "splits": reader.manifest.get("splits"),
            "images": int(counts.get("images", len(reader))),
            "patients": int(counts.get("patients", 0)),
        }
    ]


def check_datasets(cache_dirs: Sequence[str | Path]) -> None:
    """Refuse caches that cannot be merged (other image operations, a dataset twice), before any output exists."""
    readers = [cache_mod.open_cache(p) for p in cache_dirs]
    try:
        _check_compatible(readers)
        for r in readers:
            _canonical_labels(r)
    finally:
        for r in readers:
            r.close()


def _check_compatible(readers: Sequence[cache_mod.CacheReader]) -> None:
    """Refuse inputs whose pixels are not comparable or whose datasets repeat."""
    first = readers[0]
    want = dict(first.manifest.get("preprocessing") or {})
    for r in readers[1:]:
        have = dict(r.manifest.get("preprocessing") or {})
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if r.manifest.get("image_size") != first.manifest.get("image_size"):
            diff.append("image_size")
        if diff:
            raise CacheError(
                f"Cache {r.path} was preprocessed otherwise than {first.path} ({', '.join(diff)} differ).",
                "Preprocess every dataset with the same --size, --crop and CLAHE settings, then merge.",
            )
    seen: dict[str, Path] = {}
    for r in readers:
        for name in _datasets_of(r):
            if name in seen:
                raise CacheError(
                    f"Both {seen[name]} and {r.path} hold dataset '{name}'.",
                    "Merge caches of different datasets (to join --shard parts, pass the parts of one run only).",
                )
            seen[name] = r.path


def _canonical_labels(reader: cache_mod.CacheReader) -> dict[str, str]:
    mapping = {label: canonical_label(label) for label in reader.labels}
    if len(set(mapping.values())) != len(mapping):
        clash = sorted(k for k, v in mapping.items() if list(mapping.values()).count(v) > 1)
        raise CacheError(
            f"Cache {reader.path} has labels that name one finding: {', '.join(clash)}.",
            "Merge caches whose label columns are distinct findings.",
        )
    return mapping


def merged_index(readers: Sequence[cache_mod.CacheReader]) -> tuple[Any, list[str]]:
    """``(index, labels)`` of the merged cache: dataset column, qualified ids, canonical label union, rows renumbered
    in input order."""
    import pandas as pd

    labels: list[str] = []
    parts = []
    for r in readers:
        mapping = _canonical_labels(r)
        labels += [c for c in mapping.values() if c not in labels]
        part = r.index.rename(columns=mapping)
        if cache_mod.DATASET_COLUMN not in part.columns:
            name = dataset_name(r.manifest)
            part[cache_mod.DATASET_COLUMN] = name
            for col in QUALIFIED_COLUMNS:
                part[col] = [qualify(name, str(v)) for v in part[col].fillna("").astype(str)]
        parts.append(part)
    index = pd.concat(parts, ignore_index=True)  # a label one dataset lacks is NaN (not mentioned) on its rows
    index["row"] = np.arange(len(index), dtype=np.int64)
    return index, labels


def merge_datasets(
    cache_dirs: Sequence[str | Path], output: str | Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Merge complete caches of different datasets into the (prepared, empty) directory ``output``; return its
    manifest. See the module docstring for what the merged cache holds."""
    import pandas as pd

    progress = null_progress(progress)
    readers = [cache_mod.open_cache(p) for p in cache_dirs]
    try:
        _check_compatible(readers)
        first = readers[0]
        index, labels = merged_index(readers)
        out = Path(output)
        copy_images(readers, out, progress)
        rejected = pd.concat([cache_mod.read_rejected(r.path) for r in readers], ignore_index=True)
        cache_mod.write_index(out, index, labels)
        cache_mod.write_rejected(out, rejected.itertuples(index=False, name=None))
        records = [rec for r in readers for rec in _source_records(r)]
        inputs = [str(r.manifest.get("inputs_sha256")) for r in readers]
        manifest = {
            "tool": "cxr-tools",
            "tool_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {"kind": "merged", "datasets": records},
            "inputs_sha256": hashlib.sha256(json.dumps(inputs).encode()).hexdigest(),
            "labels": labels,
            "image_size": first.manifest.get("image_size"),
            "dtype": "uint8",
            "preprocessing": first.manifest.get("preprocessing"),
            "storage": first.storage,
            "store_file": cache_mod.STORE_FILES[first.storage],
            "splits": {"method": "per dataset", "datasets": {rec["name"]: rec.get("splits") for rec in records}},
            "counts": cache_mod.count_index(
                index,
                rejected=len(rejected),
                inputs=sum(int((r.manifest.get("counts") or {}).get("inputs", len(r))) for r in readers),
            ),
            "shard": None,
            cache_mod.PIXELS_DIGEST: cache_mod.pixel_digest(out, first.storage),
        }
        cache_mod.write_manifest(out, manifest)
        return manifest
    finally:
        for r in readers:
            r.close()
