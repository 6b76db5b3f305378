"""Label, patient, split and view counts of a cache index (``cxr stats``), from the index alone.

"Positive" means a stored value of 1; uncertain (-1) values are counted separately, so a CheXpert cache shows
how much a choice of uncertainty policy matters. Pure functions over the index DataFrame: no files, no images.

Patient ids, splits and views are factorised once into integer codes, and every "distinct patients" count is a
boolean patients × splits table filled by one fancy-indexing assignment per label: at NIH's 112,120 rows this
takes 0.09 s of CPU where Python sets of id strings per label and split took 0.27 s (docs/benchmarks.md, "Full
NIH scale").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNASSIGNED = "unassigned"
SPLIT_ORDER = ("train", "val", "test", UNASSIGNED)


@dataclass(frozen=True)
class LabelStats:
    """Counts for one label: positive images and patients, uncertain images, per split."""

    label: str
    images: int
    patients: int
    uncertain: int
    split_images: dict[str, int] = field(default_factory=dict)
    split_patients: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitStats:
    images: int
    patients: int


@dataclass(frozen=True)
class DatasetStats:
    """Counts of one dataset of a cache of several datasets: images, patients, images per split, positive images
    per label (labels the dataset does not mark are left out)."""

    images: int
    patients: int
    splits: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)


def compute_stats(index: Any, labels: list[str]) -> dict[str, Any]:
    """The numbers of :class:`StatsResult` from an index DataFrame (pure; no files)."""
    import pandas as pd

    raw = index[labels].to_numpy(dtype=np.float32, na_value=np.nan) if labels else np.zeros((len(index), 0))
    pos = raw == 1
    unc = raw == -1
    patient, patient_ids = pd.factorize(index["patient_id"].fillna("").astype(str))  # missing: one blank id
    n_patients = len(patient_ids)
    split_code, found = _cleaned_codes(index["split"], UNASSIGNED)
    split_names = sorted(found, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    split_code = np.array([split_names.index(s) for s in found], dtype=np.int64)[split_code]
    n_splits = len(split_names)
    cell = patient.astype(np.int64) * n_splits + split_code  # one code per (patient, split)

    def seen(rows: np.ndarray) -> np.ndarray:
        """[patients, splits] True where the patient has a selected row in that split."""
        table = np.zeros(n_patients * n_splits, dtype=bool)
        table[cell[rows]] = True
        return table.reshape(n_patients, n_splits)

    per_label = []
    pos_by_label, unc_by_label = np.ascontiguousarray(pos.T), np.ascontiguousarray(unc.T)  # rows of a label contiguous
    for j, label in enumerate(labels):
        col = pos_by_label[j]
        present = seen(col)
        per_split = np.bincount(split_code[col], minlength=n_splits)
        per_label.append(
            LabelStats(
                label=label,
                images=int(col.sum()),
                patients=int(present.any(axis=1).sum()),
                uncertain=int(unc_by_label[j].sum()),
                split_images={s: int(per_split[k]) for k, s in enumerate(split_names)},
                split_patients={s: int(v) for s, v in zip(split_names, present.sum(axis=0), strict=True)},
            )
        )
    n_pos = pos.sum(axis=1)
    hist = np.bincount(n_pos, minlength=1) if len(n_pos) else np.zeros(1, dtype=np.int64)
    split_images = np.bincount(split_code, minlength=n_splits)
    split_patients = seen(np.ones(len(index), dtype=bool)).sum(axis=0)
    co = pos.astype(np.int64).T @ pos.astype(np.int64)
    return {
        "n_images": len(index),
        "n_patients": n_patients,
        "labels": tuple(per_label),
        "no_positive_images": int((n_pos == 0).sum()),
        "labels_per_image": {int(k): int(v) for k, v in enumerate(hist) if v},
        "splits": {s: SplitStats(int(split_images[k]), int(split_patients[k])) for k, s in enumerate(split_names)},
        "views": _value_counts(index["view"], "unknown"),
        "cooccurrence": tuple(tuple(int(v) for v in row) for row in co),
        "datasets": _per_dataset(index, raw, labels, [split_names[c] for c in split_code]),
    }


def _per_dataset(index: Any, raw: np.ndarray, labels: list[str], splits: list[str]) -> dict[str, DatasetStats]:
    """:class:`DatasetStats` per value of the ``dataset`` column (none when the cache holds one dataset)."""
    if "dataset" not in index.columns:
        return {}
    names = index["dataset"].fillna("").astype(str).to_numpy(dtype=object)
    patients = index["patient_id"].fillna("").astype(str).to_numpy(dtype=object)
    split_of = np.asarray(splits, dtype=object)
    out = {}
    for name in dict.fromkeys(names):
        rows = names == name
        marked = ~np.isnan(raw[rows]).all(axis=0) if rows.any() else np.zeros(len(labels), dtype=bool)
        kinds, counts = np.unique(split_of[rows].astype(str), return_counts=True)
        out[str(name)] = DatasetStats(
            images=int(rows.sum()),
            patients=len(set(patients[rows])),
            splits={str(k): int(v) for k, v in zip(kinds, counts, strict=True)},
            positives={lab: int((raw[rows, j] == 1).sum()) for j, lab in enumerate(labels) if marked[j]},
        )
    return out


def _cleaned_codes(column: Any, empty: str) -> tuple[np.ndarray, list[str]]:
    """Row codes into the stripped distinct values of a text column (blank or missing → ``empty``), first-seen
    order. Strips the few distinct values rather than every row."""
    import pandas as pd

    codes, uniques = pd.factorize(column.fillna("").astype(str))
    merged, names = pd.factorize(np.asarray([str(u).strip() or empty for u in uniques], dtype=object))
    return merged.astype(np.int64)[codes], [str(n) for n in names]


def _value_counts(column: Any, empty: str) -> dict[str, int]:
    """``column.str.strip().replace("", empty).value_counts()`` as a dict: most frequent first, ties first-seen."""
    codes, names = _cleaned_codes(column, empty)
    counts = np.bincount(codes, minlength=len(names))
    return {names[k]: int(counts[k]) for k in np.argsort(-counts, kind="stable") if counts[k]}
