"""Patient-disjoint train / val / test splits (``index.csv`` column ``split``; docs/science.md).

Every patient's images are in exactly one of train / val / test. :func:`assign_splits` honours an official split
(NIH's ``train_val_list.txt`` / ``test_list.txt``) and otherwise splits *patients* (never images) with a seeded
generator. The seed projects split images at random and oversampled before splitting, so copies of one patient's
images landed on both sides; both are impossible here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr_tools.errors import ConfigError, DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
_MAX_NAMED = 10


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions: three numbers >= 0 summing to 1, train and test > 0."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Split fractions must be three numbers (got {fractions!r}).") from exc
    if len(values) != 3:
        raise ConfigError(f"Split fractions must be three numbers train,val,test (got {len(values)}).")
    if any(not np.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"Split fractions must be finite and >= 0 (got {values}).")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"Split fractions must sum to 1 (got {values}, sum {sum(values):g}).", "E.g. 0.7,0.1,0.2.")
    if values[0] == 0 or values[2] == 0:
        raise ConfigError(f"Train and test fractions must be > 0 (got {values}).")
    return values  # type: ignore[return-value]


def _named(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED])
    return shown + (f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else "")


def _normalise_split_values(values: Any) -> np.ndarray:
    import pandas as pd

    out = pd.Series(values).fillna("").astype(str).str.strip().str.lower().to_numpy(dtype=object)
    bad = sorted({v for v in out if v not in ("", *SPLITS)})
    if bad:
        raise DataError(f"Unknown split value(s) {', '.join(map(repr, bad))}.", "Use train, val, test or leave empty.")
    return out


def _patient_strata(table: Any, patients: np.ndarray, inverse: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Per patient, the rank of its rarest positive label (len(labels) when it has none)."""
    n_pat = len(patients)
    if not labels:
        return np.zeros(n_pat, dtype=np.int64)
    pos = table[list(labels)].to_numpy(dtype=np.float32, na_value=np.nan) == 1
    per_patient = np.zeros((n_pat, len(labels)), dtype=bool)
    np.logical_or.at(per_patient, inverse, pos)
    counts = per_patient.sum(axis=0)
    # rank 0 = rarest label; ties broken by label order for determinism
    rank_of_label = np.empty(len(labels), dtype=np.int64)
    rank_of_label[np.argsort(counts, kind="stable")] = np.arange(len(labels))
    ranks = np.where(per_patient, rank_of_label[None, :], len(labels))
    return ranks.min(axis=1)


def allocate(n: int, fractions: Sequence[float] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split positions 0..n-1 into len(fractions) groups following ``fractions`` as a repeating pattern.

    At each position the group with the largest deficit ``f * (i + 1 + offset) - count`` is chosen, so any
    contiguous run of positions (a stratum) is divided close to the fractions, and totals are within one of
    ``f * n``. A random warm-up offset keeps tiny strata from always landing in the largest group.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    offset = int(rng.integers(0, 20))
    counts = np.zeros(len(frac))
    out = np.empty(n, dtype=np.int64)
    for i in range(-offset, n):
        k = int(np.argmax(frac * (i + offset + 1) - counts - np.where(frac > 0, 0.0, np.inf)))
        counts[k] += 1
        if i >= 0:
            out[i] = k
    return out


def _split_patients(
    patients: np.ndarray, strata: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Assign each patient an index into ``fractions``: shuffled within strata, then allocated systematically."""
    perm = rng.permutation(len(patients))
    order = perm[np.lexsort((np.arange(len(perm)), strata[perm]))]
    groups = np.empty(len(patients), dtype=np.int64)
    groups[order] = allocate(len(patients), fractions, rng)
    return groups


def assign_splits(
    table: Any,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    official: Any = None,
    labels: Sequence[str] | None = None,
    patient_column: str = "patient_id",
) -> Any:
    """Assign ``train`` / ``val`` / ``test`` to every row of ``table``, patient-disjoint, deterministically.

    Rules:
      * ``official`` (a Series aligned with ``table``, or the table's own ``split`` column when it holds any
        non-empty value) is honoured: official test stays test, official val stays val. When no official
        row is ``val``, val is carved out of the official *train* patients with ``seed``, taking the share
        ``val / (train + val)`` of them so the fractions keep their meaning.
      * A patient that an official list puts on two sides raises :class:`DataError` naming the patients
        (the lists are inconsistent; silently moving images would hide a leak).
      * Rows without an official value inherit their patient's official side; patients with no official
        row at all are split by ``fractions``.
      * Without an official split, patients are split by ``fractions`` (of patients, not images). With
        ``labels``, patients are stratified by their rarest positive label so rare findings reach every
        split; otherwise the order is simply a seeded permutation.

    Args:
        table: DataFrame with ``patient_column`` (and ``labels`` columns when stratifying).
        seed: seed of the ``numpy.random.Generator`` behind every random choice.
        fractions: train, val, test shares of patients; validated by :func:`check_fractions`.
        official: optional official split per row (``train``/``val``/``test``/empty).
        labels: label columns to stratify on (raw values; 1 = positive).
        patient_column: the patient id column.

    Returns:
        A string Series named ``split`` with the same index as ``table``.
    """
    import pandas as pd

    fr = check_fractions(fractions)
    if patient_column not in table.columns:
        raise DataError(f"The index has no '{patient_column}' column.", "Patient-disjoint splits need patient ids.")
    pids = table[patient_column].fillna("").astype(str).to_numpy(dtype=object)
    if len(pids) and (pids == "").any():
        raise DataError(
            f"{int((pids == '').sum())} row(s) have no patient id.",
            "Every image needs a patient id for a patient-disjoint split; fix the metadata CSV.",
        )
    missing = [c for c in (labels or ()) if c not in table.columns]
    if missing:
        raise DataError(f"The index has no label column(s) {', '.join(missing)} to stratify on.")
    rng = np.random.default_rng(seed)
    patients, inverse = np.unique(pids.astype(str), return_inverse=True)
    strata = _patient_strata(table, patients, inverse, list(labels or ()))

    if official is None and "split" in table.columns:
        candidate = _normalise_split_values(table["split"].to_numpy())
        if (candidate != "").any():
            official = candidate
    patient_side = np.full(len(patients), -1, dtype=np.int64)
    if official is not None:
        off = _normalise_split_values(np.asarray(official, dtype=object))
        if len(off) != len(table):
            raise DataError(f"The official split has {len(off)} values for {len(table)} rows.")
        codes = np.array([SPLITS.index(v) if v else -1 for v in off], dtype=np.int64)
        _check_official_consistent(patients, inverse, codes)
        np.maximum.at(patient_side, inverse, codes)
        has_val = (codes == 1).any()
        in_train = np.flatnonzero(patient_side == 0)
        if not has_val and fr[1] > 0 and len(in_train):
            share = fr[1] / (fr[0] + fr[1])
            groups = _split_patients(patients[in_train], strata[in_train], (1 - share, share), rng)
            patient_side[in_train[groups == 1]] = 1
    free = np.flatnonzero(patient_side < 0)
    if len(free):
        patient_side[free] = _split_patients(patients[free], strata[free], fr, rng)
    out = np.asarray(SPLITS, dtype=object)[patient_side[inverse]]
    return pd.Series(out, index=table.index, name="split", dtype=object)


def _check_official_consistent(patients: np.ndarray, inverse: np.ndarray, codes: np.ndarray) -> None:
    lo = np.full(len(patients), 99, dtype=np.int64)
    hi = np.full(len(patients), -1, dtype=np.int64)
    given = codes >= 0
    np.minimum.at(lo, inverse[given], codes[given])
    np.maximum.at(hi, inverse[given], codes[given])
    bad = np.flatnonzero((hi >= 0) & (lo != hi))
    if len(bad):
        raise DataError(
            f"The official split puts {len(bad)} patient(s) on more than one side: {_named(list(patients[bad]))}.",
            "Fix the split lists so each patient is in one list, or preprocess without them to split by patient.",
        )


def check_patient_disjoint(index: Any, *, split_column: str = "split", patient_column: str = "patient_id") -> None:
    """Raise :class:`DataError` naming every patient whose images sit in more than one split.

    Empty split values are ignored (rows not assigned to any split).
    """
    for col in (split_column, patient_column):
        if col not in index.columns:
            raise DataError(f"The index has no '{col}' column.")
    sub = index[[patient_column, split_column]].astype(str)
    sub = sub[sub[split_column].str.strip() != ""]
    n_sides = sub.groupby(patient_column)[split_column].nunique()
    bad = sorted(n_sides[n_sides > 1].index.astype(str))
    if bad:
        raise DataError(
            f"{len(bad)} patient(s) have images in more than one split: {_named(bad)}.",
            "Recreate the split by patient (cxr preprocess does this by default).",
        )


def patients_of(index: Any, *rows: np.ndarray, patient_column: str = "patient_id") -> list[str]:
    """Sorted unique patient ids, as strings, of the cache rows in ``rows`` (what a model's lineage records and
    the meta-test pool is compared with; strings, so ids compare across caches)."""
    wanted = np.concatenate([np.asarray(r, dtype=np.int64).ravel() for r in rows]) if rows else np.empty(0, np.int64)
    cache_rows = index["row"].to_numpy(dtype=np.int64) if "row" in index.columns else np.arange(len(index))
    pids = index[patient_column].fillna("").astype(str).to_numpy(dtype=object)[np.isin(cache_rows, wanted)]
    return sorted({str(p) for p in pids})
