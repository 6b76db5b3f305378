"""Tiny caches and configs for the ``cxr meta-train`` tests (``from meta_train_fixtures import ...``).

The cache has six classes A–F, one patient per image, 20 positives per class and 80 negatives, 32 px images;
with the split below every pool has enough positives and negatives for 7-shot 3-query episodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from cache_factory import make_cache, make_index

from cxr_tools.engine.meta_train import MetaTrainConfig

LABELS = ("A", "B", "C", "D", "E", "F")
SPLIT = "train=A,B,C;val=D,E;test=F"
N_IMAGES = 200


def tiny_cache(tmp_path: Path, name: str = "cache", size: int = 32) -> Path:
    """Rows with ``i % 10 < 6`` are positive for class ``i % 10`` (and for the next class every 7th row, so some
    images are multi-label); the other rows are negatives. Images carry a class-dependent blob so tasks are
    learnable."""
    values = np.zeros((N_IMAGES, len(LABELS)), dtype=np.float32)
    for i in range(N_IMAGES):
        k = i % 10
        if k < len(LABELS):
            values[i, k] = 1
            if i % 7 == 0 and k + 1 < 3:  # a little co-occurrence among the meta-train classes only
                values[i, k + 1] = 1
    index = make_index(N_IMAGES, LABELS, values=values, patients=[f"p{i:04d}" for i in range(N_IMAGES)])
    rng = np.random.default_rng(0)
    images = rng.normal(100, 20, (N_IMAGES, size, size))
    for i in range(N_IMAGES):
        for k in np.flatnonzero(values[i]):
            r, c = divmod(int(k), 3)
            y, x = 4 + r * 12, 4 + c * 9
            images[i, y : y + 8, x : x + 8] += 60
    images = np.clip(images, 0, 255).astype(np.uint8)
    return make_cache(tmp_path, labels=LABELS, index=index, images=images, name=name)


def tiny_config(cache: Path, output: Path, **overrides: Any) -> MetaTrainConfig:
    """A meta-train config that runs in about a second per meta-step on one CPU thread."""
    values: dict[str, Any] = {
        "cache": cache,
        "output": output,
        "ways": 2,
        "shots": 7,
        "queries": 3,
        "adapt_steps": 2,
        "inner_lr": 0.05,
        "meta_lr": 0.01,
        "meta_batch": 2,
        "episodes": 4,
        "backbone": "conv4-tiny",
        "engine": "func",
        "meta_split": SPLIT,
        "val_every": 1,
        "val_episodes": 2,
        "seed": 3,
        "device": "cpu",
        "threads": 1,
        "log_every_steps": 1,
    }
    values.update(overrides)
    return MetaTrainConfig(**values)


def weights(path: Path) -> dict[str, Any]:
    """The tensors of ``RUN/model/model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model" / "model.safetensors"))
