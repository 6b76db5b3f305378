"""Class-disjoint meta-splits (``meta_split.json``) and their disjoint image pools (docs/science.md).

Disjoint class sets for meta-train / meta-val / meta-test (MetaChest default for NIH) and, from them, disjoint
image pools (:func:`meta_split_pools`) in which an image used for meta-training carries no meta-val / meta-test
finding and no patient spans two pools. The patient split is :mod:`cxr_tools.data.splits.patients`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.caches.datasets import unlabelled_classes
from cxr_tools.data.labels import METACHEST_OPTIONAL, METACHEST_SPLIT, canonical_label
from cxr_tools.data.splits.patients import SPLITS, allocate
from cxr_tools.errors import ConfigError, DataError, InputError
from cxr_tools.runtime.fs import atomic_write_json

log = logging.getLogger(__name__)

META_SPLIT_FILE = "meta_split.json"
META_SPLIT_VERSION = 1

# --- meta-split ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaSplit:
    """Class-disjoint meta-train / meta-val / meta-test class sets (docs/science.md).

    ``optional``: classes :meth:`resolve` leaves out (logged) when the label space lacks them, e.g. MetaChest's
    Lung Opacity on an NIH cache; any other unknown class is an error.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    name: str = "custom"
    optional: tuple[str, ...] = ()

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
                elif c in self.optional:
                    log.debug("Meta-split %s: %s is not in this label space; left out of meta-%s.", self.name, c, split)
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


#: MetaChest's split (data/labels.py); on a label space without Lung Opacity (NIH) meta-train has the other six.
METACHEST = MetaSplit(
    train=METACHEST_SPLIT["train"],
    val=METACHEST_SPLIT["val"],
    test=METACHEST_SPLIT["test"],
    name="metachest",
    optional=METACHEST_OPTIONAL,
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
        groups = allocate(len(order), weights, rng)
        if len(order) >= 3:  # every pool gets a negative patient: take one from the pool with the most
            for k in range(3):
                if not (groups == k).any():
                    donor = int(np.argmax(np.bincount(groups, minlength=3)))
                    groups[np.flatnonzero(groups == donor)[0]] = k
        tier[order] = groups
    image_tier = tier[inverse]
    return {name: np.sort(rows[image_tier == k]) for k, name in enumerate(SPLITS)}


def resolve_meta_split(
    spec: str | None, cache_dir: Path, labels: Sequence[str], manifest: Mapping[str, Any] | None = None
) -> MetaSplit:
    """The meta-split to use for a cache, resolved against its label space.

    ``auto`` (or empty) takes ``CACHE/meta_split.json`` when the cache has one, else MetaChest when the labels are
    NIH's; any other label space needs an explicit ``--meta-split``. With the cache's ``manifest``, a class that
    one of the datasets of a merged cache does not label is named in a warning (:func:`warn_unlabelled`).
    """
    text = (spec or "").strip()
    if text.lower() in {"", "auto"}:
        saved = load_meta_split(cache_dir)
        if saved is not None:
            split = saved.resolve(labels)
        else:
            try:
                split = METACHEST.resolve(labels)
            except ConfigError:
                raise ConfigError(
                    f"The cache's labels ({', '.join(labels)}) are not NIH's, so the default MetaChest meta-split "
                    "does not apply.",
                    "Pass --meta-split 'train=A,B;val=C;test=D,E' or a YAML/JSON file with train/val/test class lists.",
                ) from None
    else:
        split = parse_meta_split(text, labels)
    if manifest is not None:
        warn_unlabelled(cache_dir, manifest, split)
    return split


def warn_unlabelled(cache_dir: Path, manifest: Mapping[str, Any], split: MetaSplit) -> None:
    """Warn when a merged cache holds a dataset that does not label one of the split's classes: its rows would be
    drawn as that class's negatives (docs/design.md, "Caches of several datasets")."""
    missing = unlabelled_classes(manifest, [*split.train, *split.val, *split.test])
    if missing:
        which = "; ".join(f"{name} does not label {', '.join(classes)}" for name, classes in missing.items())
        log.warning(
            "Cache %s merges datasets that do not all label the meta-split's classes (%s): their rows count as "
            "negatives of those classes. Choose classes every merged dataset labels.",
            cache_dir,
            which,
        )


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
