"""The episode samplers of a cache's meta-split: meta-train, and meta-val with its fallback to fewer ways.

They join a meta-split's classes and pools (:mod:`cxr_tools.data.splits.meta`) with the episode sampler
(:mod:`cxr_tools.data.sampling.episodes`); ``cxr meta-train`` and the validation of its weights use them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.sampling.episodes import EpisodeSampler, EpisodeSpec, index_patients
from cxr_tools.data.splits.meta import MetaSplit, check_pools, meta_split_pools, resolve_meta_split
from cxr_tools.errors import DataError

log = logging.getLogger(__name__)


def meta_split_sampler(
    raw: np.ndarray,
    labels: Sequence[str],
    split: MetaSplit,
    pools: Mapping[str, np.ndarray],
    name: str,
    spec: Any,
    **sampler_args: Any,
) -> Any:
    """The :class:`~cxr_tools.data.sampling.episodes.EpisodeSampler` of meta-split ``name`` (its classes, its pool).

    ``spec`` is an :class:`~cxr_tools.data.sampling.episodes.EpisodeSpec`; ``sampler_args`` go to the sampler.
    Errors say which split is short of images.
    """
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
    split = resolve_meta_split(spec_text, Path(cache.path), cache.labels, cache.manifest)
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
