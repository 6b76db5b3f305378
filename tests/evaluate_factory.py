"""Tiny caches with a saved meta-split and tiny finished runs of every training kind, for evaluate/compare tests.

Import as ``from evaluate_factory import make_eval_cache, make_run`` (``tests/`` is on pytest's ``pythonpath``).
The cache holds 32 px images whose brightness pattern depends on the findings, so few-shot methods can learn
something; runs are real model folders written with :func:`save_model_dir` (conv4-tiny), not trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from cache_factory import make_cache, make_index

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.splits.meta import MetaSplit, meta_split_pools, save_meta_split
from cxr_tools.data.splits.patients import patients_of
from cxr_tools.models import create_model, save_model_dir
from cxr_tools.models.lineage import write_lineage

LABELS = ("A", "B", "C", "D", "E", "F")
SPLIT = MetaSplit(train=("A", "B"), val=("C",), test=("D", "E", "F"), name="test-split")
SPLIT_SPEC = "train=A,B;val=C;test=D,E,F"


def make_eval_cache(tmp_path: Path, n: int = 200, *, name: str = "cache", seed: int = 0, size: int = 32) -> Path:
    """A complete cache of ``n`` images over :data:`LABELS` with :data:`SPLIT` saved as its meta-split."""
    rng = np.random.default_rng(seed)
    values = (rng.random((n, len(LABELS))) < 0.17).astype(np.float32)
    index = make_index(n, LABELS, values=values, seed=seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = rng.normal(90, 12, (n, size, size))
    for j in range(len(LABELS)):  # finding j brightens its own blob
        cy, cx = (8 + 16 * (j % 2), 6 + 10 * (j // 2))
        blob = 70 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
        images += values[:, j, None, None] * blob[None]
    images = np.clip(images, 0, 255).astype(np.uint8)
    manifest = {"preprocessing": {"size": size, "clahe": False}}
    path = make_cache(tmp_path, index=index, labels=LABELS, images=images, name=name, manifest=manifest)
    save_meta_split(path, SPLIT)
    return path


def make_run(
    tmp_path: Path,
    cache: Path,
    kind: str,
    *,
    name: str | None = None,
    labels: tuple[str, ...] = ("A", "B"),
    ways: int = 2,
    norm: str = "group",
    extra: dict[str, Any] | None = None,
    image_size: int = 32,
    preprocessing: dict[str, Any] | None = None,
    lineage: bool = True,
) -> Path:
    """A finished run directory ``tmp_path/name`` with ``model/`` of training ``kind`` (maml/protonet/siamese/
    supervised).

    With ``lineage`` the model records, as a trainer would, its classes and the patients of the meta-train pool
    (pool seed 0; MAML: meta-train and meta-val pools), so evaluate accepts it unless its classes leak.
    """
    run = Path(tmp_path) / (name or kind)
    reader = open_cache(cache)
    torch.manual_seed(0)
    if kind == "maml":
        model = create_model("conv4-tiny", num_classes=ways, norm=norm)
        head_labels: list[str] = []
        base = {
            "maml": {"inner_lr": 0.1, "adapt_steps": 2, "first_order": True, "ways": ways},
            "meta_split": SPLIT.to_dict(),
            "pool_seed": 0,
        }
    elif kind == "protonet":
        model = create_model("conv4-tiny", num_classes=ways, norm=norm)
        head_labels = []
        base = {"protonet": {"rule": "mean-distance", "ways": ways}, "meta_split": SPLIT.to_dict(), "pool_seed": 0}
    elif kind == "siamese":
        model = create_model("conv4-tiny", num_classes=8, norm=norm)
        head_labels = []
        base = {"distance": "cosine", "pair_rule": "same-set", "pair_labels": list(labels), "threshold": 0.6}
    else:
        model = create_model("conv4-tiny", num_classes=len(labels), norm=norm)
        head_labels = list(labels)
        base = {"classes_rule": "base"}
    meta = {
        "labels": head_labels,
        "training": kind,
        "cache_manifest_hash": reader.manifest_hash,
        "image_size": image_size,
        "normalisation": "unit",
        "preprocessing": reader.manifest.get("preprocessing") if preprocessing is None else preprocessing,
        "extra": {**base, **(extra or {})},
    }
    if lineage:
        pools = meta_split_pools(reader.index, reader.labels, SPLIT, seed=0)
        used = [pools["train"], pools["val"]] if kind in ("maml", "protonet") else [pools["train"]]
        meta["lineage"] = write_lineage(
            run / "model", meta, run=run, patients=patients_of(reader.index, *used), pool="meta-train",
            meta_split=SPLIT.to_dict(), pool_seed=0,
        )  # fmt: skip
    save_model_dir(model, meta, run / "model")
    return run
