"""Which label columns and cache rows a supervised or Siamese trainer uses (``--classes``, ``--meta-split``).

``--classes base`` selects the meta-split's meta-train classes *and* the meta-train image pool (images carrying no
meta-val / meta-test finding, :func:`~cxr_tools.data.splits.meta.meta_split_pools` with ``--pool-seed``): the
pre-training of the few-shot fine-tune baseline, whose held-out classes must never have been trained, neither as
a head column nor through their images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.caches.format import CacheReader, open_cache
from cxr_tools.data.splits.meta import MetaSplit
from cxr_tools.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def base_split(cache: CacheReader, classes: Sequence[str], meta_split: str | None) -> MetaSplit | None:
    """The meta-split of ``--classes base`` (``meta_split``, else the cache's, else MetaChest); None otherwise."""
    from cxr_tools.data.splits.meta import load_meta_split, parse_meta_split

    if [c.strip().lower() for c in classes if c and c.strip()] != ["base"]:
        return None
    spec: Any = meta_split if meta_split is not None else load_meta_split(cache.path)
    return parse_meta_split(spec, cache.labels)


def pool_record(cache: CacheReader, config: Any) -> dict[str, Any]:
    """The pool a trainer's ``config`` draws from, as keywords of :func:`~cxr_tools.models.lineage.write_lineage`."""
    split = base_split(cache, config.classes, config.meta_split)
    if split is None:
        return {"pool": "all"}
    return {"pool": "meta-train", "meta_split": split.to_dict(), "pool_seed": config.pool_seed}


def resolve_classes(
    cache: CacheReader, classes: Sequence[str], meta_split: str | None, pool_seed: int = 0
) -> tuple[list[str], np.ndarray | None]:
    """The label columns to use and, for ``base``, the meta-train image pool of ``pool_seed`` (cache rows)."""
    from cxr_tools.data.splits.meta import meta_split_pools

    names = [c.strip() for c in classes if c and c.strip()]
    if not names or [n.lower() for n in names] == ["all"]:
        return list(cache.labels), None
    split = base_split(cache, names, meta_split)
    if split is not None:
        pool = meta_split_pools(cache.index, cache.labels, split, seed=pool_seed)["train"]
        log.info("Training the meta-train (base) classes %s on %d pool images.", ", ".join(split.train), len(pool))
        return list(split.train), pool
    if any(n.lower() in {"base", "all"} for n in names):
        raise ConfigError("--classes base / all cannot be mixed with class names.", "Give one or the other.")
    unknown = [n for n in names if n not in cache.labels]
    if unknown:
        raise ConfigError(
            f"Class(es) {', '.join(unknown)} are not in cache {cache.path}.",
            f"Its labels: {', '.join(cache.labels)}; or use --classes base for the meta-train classes.",
        )
    if len(set(names)) != len(names):
        raise ConfigError("--classes lists a class more than once.")
    return names, None


def split_rows(cache: CacheReader, split: str, pool: np.ndarray | None, *, required: bool = True) -> np.ndarray:
    """Cache rows of patient split ``split`` (within ``pool`` when given), sorted."""
    col = cache.index["split"].astype(str).str.strip().str.lower().to_numpy()
    rows = cache.index["row"].to_numpy(dtype=np.int64)[col == split]
    if pool is not None:
        rows = np.intersect1d(rows, pool)
    if required and len(rows) == 0:
        present = sorted({s for s in col if s})
        raise DataError(
            f"Cache {cache.path} has no images in split '{split}'"
            + (" within the meta-train pool" if pool is not None else "")
            + ".",
            f"Its splits: {', '.join(present) or 'none'}; recreate the cache with `cxr preprocess --fractions`.",
        )
    return np.sort(rows)


def open_training_data(
    cache_path: Path, classes: Sequence[str], meta_split: str | None, pool_seed: int = 0
) -> tuple[CacheReader, list[str], np.ndarray, np.ndarray]:
    """The cache, the label columns to train (:func:`resolve_classes`) and the train and val rows of their pool."""
    cache = open_cache(cache_path)
    labels, pool = resolve_classes(cache, classes, meta_split, pool_seed)
    return cache, labels, split_rows(cache, "train", pool), split_rows(cache, "val", pool, required=False)
