"""Patient-disjoint train/val/test splits and class-disjoint meta-splits with disjoint image pools.

Two kinds of split live in a cache (docs/science.md, "What is disjoint from what"):

* **Patient split** (``index.csv`` column ``split``): every patient's images are in exactly one of
  train / val / test. :func:`assign_splits` honours an official split (NIH's ``train_val_list.txt`` /
  ``test_list.txt``) and otherwise splits *patients* (never images) with a seeded generator. The seed
  projects split images at random and oversampled before splitting, so copies of one patient's images
  landed on both sides; both are impossible here.
* **Meta-split** (``meta_split.json``): disjoint class sets for meta-train / meta-val / meta-test
  (MetaChest default for NIH) and, from it, disjoint image pools (:func:`meta_split_pools`) in which an
  image used for meta-training carries no meta-val / meta-test finding and no patient spans two pools.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.labels import METACHEST_SPLIT, canonical_label
from cxr_tools.errors import ConfigError, DataError, InputError
from cxr_tools.runtime.fs import atomic_write_json

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
META_SPLIT_FILE = "meta_split.json"
META_SPLIT_VERSION = 1
_MAX_NAMED = 10


# --- patient split -----------------------------------------------------------------------------------------


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


def _allocate(n: int, fractions: Sequence[float] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    groups[order] = _allocate(len(patients), fractions, rng)
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


# --- meta-split ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaSplit:
    """Class-disjoint meta-train / meta-val / meta-test class sets (docs/science.md)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        for split in SPLITS:
            classes = tuple(str(c).strip() for c in getattr(self, split))
            object.__setattr__(self, split, classes)
            if not classes:
                raise ConfigError(f"The meta-split's {split} class set is empty.", "Give at least one class per split.")
            dup = sorted({c for c in classes if classes.count(c) > 1})
            if dup:
                raise ConfigError(f"Meta-{split} lists {', '.join(dup)} more than once.")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if shared:
                raise ConfigError(
                    f"Meta-{a} and meta-{b} share class(es) {', '.join(shared)}.",
                    "Meta-splits must be class-disjoint; put each class in one split.",
                )

    def classes(self, split: str) -> tuple[str, ...]:
        """The classes of ``split`` (train, val or test)."""
        if split not in SPLITS:
            raise ConfigError(f"Unknown meta-split '{split}'.", f"Use one of: {', '.join(SPLITS)}.")
        return getattr(self, split)  # type: ignore[no-any-return]

    @property
    def all_classes(self) -> tuple[str, ...]:
        return self.train + self.val + self.test

    def resolve(self, label_space: Sequence[str]) -> MetaSplit:
        """This split with each class spelled as in ``label_space``; unknown classes raise ConfigError.

        Names match exactly, else through :func:`canonical_label` (``Pleural Effusion`` finds ``Effusion``).
        """
        space = list(label_space)
        canon = {canonical_label(s): s for s in space}
        out: dict[str, tuple[str, ...]] = {}
        unknown: list[str] = []
        for split in SPLITS:
            resolved = []
            for c in getattr(self, split):
                if c in space:
                    resolved.append(c)
                elif canonical_label(c) in canon:
                    resolved.append(canon[canonical_label(c)])
                else:
                    unknown.append(c)
            out[split] = tuple(resolved)
        if unknown:
            raise ConfigError(
                f"Meta-split class(es) {', '.join(unknown)} are not in the label space.",
                f"Known labels: {', '.join(space)}.",
            )
        return MetaSplit(out["train"], out["val"], out["test"], name=self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "train": list(self.train), "val": list(self.val), "test": list(self.test)}


METACHEST = MetaSplit(
    train=METACHEST_SPLIT["train"], val=METACHEST_SPLIT["val"], test=METACHEST_SPLIT["test"], name="metachest"
)


def _split_classes(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(c.strip() for c in value.split(",") if c.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(c).strip() for c in value)
    raise ConfigError(f"{where}: expected a list of class names, got {type(value).__name__}.")


def _from_mapping(data: Mapping[str, Any], where: str) -> MetaSplit:
    keys = {str(k).lower().removeprefix("meta-").removeprefix("meta_"): v for k, v in data.items()}
    unknown = sorted(set(keys) - {*SPLITS, "name", "version"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}.", "Use train, val, test (and name).")
    missing = [s for s in SPLITS if s not in keys]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)} class list(s).", "Give train, val and test.")
    train, val, test = (_split_classes(keys[s], f"{where} {s}") for s in SPLITS)
    return MetaSplit(train, val, test, name=str(keys.get("name", "custom")))


def parse_meta_split(spec: Any = None, labels: Sequence[str] | None = None) -> MetaSplit:
    """Build a :class:`MetaSplit` from what a user gives, validated against ``labels`` when given.

    Args:
        spec: ``None`` / ``"metachest"`` (the default NIH split), a :class:`MetaSplit`, a mapping
            ``{"train": [...], "val": [...], "test": [...]}``, a path to a YAML or JSON file holding that
            mapping, or an inline string ``"train=A,B;val=C;test=D,E"``.
        labels: the cache's label space; classes are resolved against it (:meth:`MetaSplit.resolve`).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in {"", "metachest", "default"}):
        split = METACHEST
    elif isinstance(spec, MetaSplit):
        split = spec
    elif isinstance(spec, Mapping):
        split = _from_mapping(spec, "meta-split")
    elif isinstance(spec, Path) or (isinstance(spec, str) and "=" not in spec):
        split = _from_file(Path(spec))
    elif isinstance(spec, str):
        parts: dict[str, str] = {}
        for part in spec.split(";"):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(f"Cannot read meta-split part '{part}'.", "Write train=A,B;val=C;test=D.")
            key, value = part.split("=", 1)
            parts[key.strip()] = value
        split = _from_mapping(parts, "meta-split")
    else:
        raise ConfigError(f"Cannot read a meta-split from {type(spec).__name__}.")
    return split.resolve(labels) if labels is not None else split


def _from_file(path: Path) -> MetaSplit:
    if not path.is_file():
        raise InputError(
            f"Meta-split file {path} does not exist.",
            "Give a YAML/JSON file with train/val/test class lists, 'train=A,B;val=C;test=D', or 'metachest'.",
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError / yaml.YAMLError
        raise ConfigError(f"Meta-split file {path} cannot be parsed: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"Meta-split file {path} must hold a mapping with train, val and test class lists.")
    return _from_mapping(data, str(path))


def save_meta_split(cache_dir: str | Path, meta_split: MetaSplit, *, labels: Sequence[str] | None = None) -> Path:
    """Write ``CACHE/meta_split.json`` atomically (validated against ``labels`` when given)."""
    if labels is not None:
        meta_split = meta_split.resolve(labels)
    return atomic_write_json(Path(cache_dir) / META_SPLIT_FILE, {"version": META_SPLIT_VERSION, **meta_split.to_dict()})


def load_meta_split(cache_dir: str | Path) -> MetaSplit | None:
    """The meta-split saved in a cache, or None when the cache has none."""
    path = Path(cache_dir) / META_SPLIT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}.", "Delete it and save the meta-split again.") from exc
    if not isinstance(data, Mapping) or data.get("version") != META_SPLIT_VERSION:
        raise DataError(f"{path} has an unsupported format.", "Delete it and save the meta-split again.")
    return _from_mapping(data, str(path))


# --- disjoint image pools -----------------------------------------------------------------------------------


def meta_split_pools(
    index: Any,
    labels: Sequence[str],
    meta_split: MetaSplit,
    *,
    seed: int = 0,
    patient_column: str = "patient_id",
) -> dict[str, np.ndarray]:
    """Disjoint image pools (cache rows) for meta-train / meta-val / meta-test.

    The rule works by patient, so pools are class-, image- and patient-disjoint:

    1. A patient with any image *carrying* a meta-test class goes to meta-test; else one carrying a meta-val
       class goes to meta-val; else one carrying a meta-train class goes to meta-train. "Carrying" means a
       positive **or uncertain** (-1) value: an uncertain meta-test finding must not leak into meta-training.
    2. Patients with none of the split classes (e.g. "No Finding") are the negatives; they are distributed
       over the three pools with ``seed``, in proportion to each pool's positive patients and at least one
       per pool when there are three or more, so every pool has negatives for its episodes.

    Hence a meta-train image carries no meta-val/meta-test class, a meta-val image no meta-test class, and
    all images of a patient share one pool. The price: a patient with one meta-test image contributes all
    of its images to meta-test only (the images without a meta-test finding serve there as negatives).

    Args:
        index: the cache index (``row``, ``patient_id`` and label columns, raw values).
        labels: the label space the meta-split is resolved against (usually the cache's).
        meta_split: the class split.
        seed: seed for distributing negative patients.

    Returns:
        ``{"train": rows, "val": rows, "test": rows}``, each a sorted int64 array of cache rows.
    """
    split = meta_split.resolve(labels)
    if patient_column not in index.columns:
        raise DataError(f"The index has no '{patient_column}' column.")
    rows = index["row"].to_numpy(dtype=np.int64) if "row" in index.columns else np.arange(len(index))
    pids = index[patient_column].fillna("").astype(str).to_numpy(dtype=object).astype(str)
    patients, inverse = np.unique(pids, return_inverse=True)
    tier = np.full(len(patients), -1, dtype=np.int64)
    for level, name in enumerate(SPLITS):
        raw = index[list(split.classes(name))].to_numpy(dtype=np.float32, na_value=np.nan)
        carries = ((raw == 1) | (raw == -1)).any(axis=1)
        np.maximum.at(tier, inverse[carries], level)
    negatives = np.flatnonzero(tier < 0)
    if len(negatives):
        positives = np.array([(tier == k).sum() for k in range(3)], dtype=np.float64)
        weights = positives / positives.sum() if positives.sum() else np.full(3, 1 / 3)
        rng = np.random.default_rng([seed, 7])
        order = negatives[rng.permutation(len(negatives))]
        groups = _allocate(len(order), weights, rng)
        if len(order) >= 3:  # every pool gets a negative patient: take one from the pool with the most
            for k in range(3):
                if not (groups == k).any():
                    donor = int(np.argmax(np.bincount(groups, minlength=3)))
                    groups[np.flatnonzero(groups == donor)[0]] = k
        tier[order] = groups
    image_tier = tier[inverse]
    return {name: np.sort(rows[image_tier == k]) for k, name in enumerate(SPLITS)}


def patients_of(index: Any, *rows: np.ndarray, patient_column: str = "patient_id") -> list[str]:
    """Sorted unique patient ids, as strings, of the cache rows in ``rows`` (what a model's lineage records and
    the meta-test pool is compared with; strings, so ids compare across caches)."""
    wanted = np.concatenate([np.asarray(r, dtype=np.int64).ravel() for r in rows]) if rows else np.empty(0, np.int64)
    cache_rows = index["row"].to_numpy(dtype=np.int64) if "row" in index.columns else np.arange(len(index))
    pids = index[patient_column].fillna("").astype(str).to_numpy(dtype=object)[np.isin(cache_rows, wanted)]
    return sorted({str(p) for p in pids})


def resolve_meta_split(spec: str | None, cache_dir: Path, labels: Sequence[str]) -> MetaSplit:
    """The meta-split to use for a cache, resolved against its label space.

    ``auto`` (or empty) takes ``CACHE/meta_split.json`` when the cache has one, else MetaChest when the labels are
    NIH's; any other label space needs an explicit ``--meta-split``.
    """
    text = (spec or "").strip()
    if text.lower() in {"", "auto"}:
        saved = load_meta_split(cache_dir)
        if saved is not None:
            return saved.resolve(labels)
        try:
            return METACHEST.resolve(labels)
        except ConfigError:
            raise ConfigError(
                f"The cache's labels ({', '.join(labels)}) are not NIH's, so the default MetaChest meta-split "
                "does not apply.",
                "Pass --meta-split 'train=A,B;val=C;test=D,E' or a YAML/JSON file with train/val/test class lists.",
            ) from None
    return parse_meta_split(text, labels)


def check_pools(raw: np.ndarray, labels: Sequence[str], split: MetaSplit, pools: Mapping[str, np.ndarray]) -> None:
    """Refuse pools that would leak: shared images, or a meta-train / meta-val image carrying a later split's class.

    "Carrying" is a positive or uncertain value. :func:`meta_split_pools` guarantees this; the check makes the
    guarantee part of every meta-training run rather than a property of one function.
    """
    names = list(labels)
    seen: set[int] = set()
    for name in SPLITS:
        rows = set(int(r) for r in pools[name])
        if rows & seen:
            raise DataError(f"The meta-{name} image pool shares images with another pool.", "Report this as a bug.")
        seen |= rows
    for i, name in enumerate(("train", "val")):
        later = [c for s in SPLITS[i + 1 :] for c in split.classes(s)]
        cols = [names.index(c) for c in later]
        values = raw[np.asarray(pools[name], dtype=np.int64)][:, cols]
        carried = ((values == 1) | (values == -1)).any(axis=0)
        if carried.any():
            leaked = [c for c, hit in zip(later, carried, strict=True) if hit]
            raise DataError(
                f"The meta-{name} pool holds images labelled {', '.join(leaked)} (a later split's classes).",
                "Report this as a bug.",
            )


def meta_split_sampler(
    raw: np.ndarray,
    labels: Sequence[str],
    split: MetaSplit,
    pools: Mapping[str, np.ndarray],
    name: str,
    spec: Any,
    **sampler_args: Any,
) -> Any:
    """The :class:`~cxr_tools.data.episodes.EpisodeSampler` of meta-split ``name`` (its classes, its pool).

    ``spec`` is an :class:`~cxr_tools.data.episodes.EpisodeSpec`; ``sampler_args`` go to the sampler. Errors say
    which split is short of images.
    """
    from cxr_tools.data.episodes import EpisodeSampler

    try:
        return EpisodeSampler(raw, labels, split.classes(name), pools[name], spec, **sampler_args)
    except DataError as exc:
        hint = exc.hint or ""
        if name == "val":
            hint += " (--val-episodes 0 skips validation.)"
        raise DataError(f"Meta-{name} classes/pool: {exc.message}", hint.strip() or None) from None


def meta_samplers(
    cache: Any, spec_text: str | None, pool_seed: int, spec: Any, *, validation: bool
) -> tuple[MetaSplit, Any, Any, dict[str, np.ndarray]]:
    """The meta-split of ``cache`` and the episode samplers of its meta-train (and meta-val) classes and pools.

    The pools (:func:`meta_split_pools` with ``pool_seed``) are checked for leaks (:func:`check_pools`); the
    meta-test pool never reaches a sampler, and no episode gives one patient more than ``spec`` allows. Returns
    the split, the train sampler, the val sampler (None without ``validation``; see :func:`validation_sampler`
    for the episodes it draws when ``spec.ways``-way ones cannot be formed) and the pools' cache rows. Classes
    too short of patients to fill an episode are left out of meta-train and meta-val (logged); meta-test never
    drops one.
    """
    from cxr_tools.data.episodes import index_patients

    split = resolve_meta_split(spec_text, Path(cache.path), cache.labels)
    raw = cache.raw_labels()
    pools = meta_split_pools(cache.index, cache.labels, split, seed=pool_seed)
    check_pools(raw, cache.labels, split, pools)
    pids = index_patients(cache.index)
    # a model learns from the classes that can fill an episode; meta-test (evaluate) keeps every class
    learn = {"patients": pids, "drop_short": True}
    train = meta_split_sampler(raw, cache.labels, split, pools, "train", spec, **learn)
    val = validation_sampler(raw, cache.labels, split, pools, spec, **learn) if validation else None
    return split, train, val, pools


def validation_sampler(
    raw: np.ndarray, labels: Sequence[str], split: MetaSplit, pools: Mapping[str, np.ndarray], spec: Any, **args: Any
) -> Any:
    """The meta-val sampler: ``spec.ways``-way episodes when the meta-val classes and pool can form them, else
    episodes of fewer ways (logged; the sampler's ``spec.ways`` says how many).

    A negative is an image with none of the episode's classes, so a single-label split of C meta-val classes
    (class folders without "No Finding") forms at most (C - 1)-way episodes, whose negatives are the images of
    the meta-val classes left out of the episode. Meta-val images are never trained on, so these episodes
    select weights without a leak. Model selection is never dropped in silence: when no episode of any number
    of ways can be formed the run is refused (``--val-episodes 0`` keeps the final weights knowingly).

    Raises:
        DataError: not even 1-way meta-val episodes (one class against negatives) can be drawn.
    """
    from cxr_tools.data.episodes import EpisodeSpec

    try:
        return meta_split_sampler(raw, labels, split, pools, "val", spec, **args)
    except DataError as exc:
        first = exc
    for ways in range(min(spec.ways, len(split.classes("val"))) - 1, 0, -1):
        fewer = EpisodeSpec(ways, spec.shots, spec.queries, spec.images_per_patient)
        try:
            sampler = meta_split_sampler(raw, labels, split, pools, "val", fewer, **args)
        except DataError:
            continue
        log.warning(
            "%s Meta-validation uses %d-way episodes instead (negatives: meta-val images without the episode's "
            "classes) to select the weights.",
            first.message,
            ways,
        )
        return sampler
    raise DataError(
        f"{first.message} Meta-validation is impossible with these classes, even with 1-way episodes, so the "
        "weights could not be selected.",
        "Give meta-val at least two classes with enough images (--meta-split), add images without them (e.g. a "
        "'No Finding' folder), or pass --val-episodes 0 to keep the final weights knowingly.",
    )


def validation_record(val_sampler: Any, requested_ways: int, episodes: int) -> dict[str, Any]:
    """How a meta-training run selects its weights (run.json ``validation``): the meta-val episodes' ways,
    classes and negatives, from :func:`validation_sampler`'s sampler (None: no validation, asked for)."""
    if val_sampler is None:
        return {"episodes": 0, "selection": "none (--val-episodes 0): the final weights are kept"}
    ways = int(val_sampler.spec.ways)
    fewer = "" if ways == requested_ways else f" on {ways}-way episodes ({requested_ways}-way cannot be formed)"
    return {
        "episodes": episodes,
        "ways": ways,
        "requested_ways": requested_ways,
        "classes": list(val_sampler.classes),
        "negatives": "meta-val images with none of the episode's classes",
        "selection": f"best meta-val AUC{fewer}",
    }
