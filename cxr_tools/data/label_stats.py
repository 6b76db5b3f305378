"""Label, patient, split and view counts of a cache index (``cxr stats``), from the index alone.

"Positive" means a stored value of 1; uncertain (-1) values are counted separately, so a CheXpert cache shows
how much a choice of uncertainty policy matters. Pure functions over the index DataFrame: no files, no images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNASSIGNED = "unassigned"


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


def compute_stats(index: Any, labels: list[str]) -> dict[str, Any]:
    """The numbers of :class:`StatsResult` from an index DataFrame (pure; no files)."""
    raw = index[labels].to_numpy(dtype=np.float32, na_value=np.nan) if labels else np.zeros((len(index), 0))
    pos = raw == 1
    unc = raw == -1
    pids = index["patient_id"].astype(str).to_numpy()
    split = index["split"].astype(str).str.strip().replace("", UNASSIGNED).to_numpy()
    order = ["train", "val", "test", UNASSIGNED]
    split_names = sorted(set(split), key=lambda s: (order.index(s) if s in order else len(order), s))
    per_label = []
    for j, label in enumerate(labels):
        col = pos[:, j]
        per_label.append(
            LabelStats(
                label=label,
                images=int(col.sum()),
                patients=len(set(pids[col])),
                uncertain=int(unc[:, j].sum()),
                split_images={s: int((col & (split == s)).sum()) for s in split_names},
                split_patients={s: len(set(pids[col & (split == s)])) for s in split_names},
            )
        )
    n_pos = pos.sum(axis=1)
    hist = np.bincount(n_pos, minlength=1) if len(n_pos) else np.zeros(1, dtype=np.int64)
    views = index["view"].astype(str).str.strip().replace("", "unknown").value_counts()
    co = pos.astype(np.int64).T @ pos.astype(np.int64)
    return {
        "n_images": len(index),
        "n_patients": len(set(pids)),
        "labels": tuple(per_label),
        "no_positive_images": int((n_pos == 0).sum()),
        "labels_per_image": {int(k): int(v) for k, v in enumerate(hist) if v},
        "splits": {s: SplitStats(int((split == s).sum()), len(set(pids[split == s]))) for s in split_names},
        "views": {str(k): int(v) for k, v in views.items()},
        "cooccurrence": tuple(tuple(int(v) for v in row) for row in co),
    }
