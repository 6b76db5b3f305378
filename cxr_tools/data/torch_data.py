"""A torch Dataset over a preprocessed cache, light anatomical augmentation, and a seeded DataLoader.

Each item is a tuple ``(image, targets, mask)``:

* ``image``: float32 ``[1, H, W]``, normalised to ``[0, 1]`` (``normalize="unit"``) or TorchXRayVision's
  ``[-1024, 1024]`` (``normalize="xrv"``, i.e. ``(2 * x / 255 - 1) * 1024``);
* ``targets``: float32 ``[L]`` in {0, 1} after the uncertainty policy (SCIENCE.md §1);
* ``mask``: bool ``[L]``, False where the loss must ignore an entry (uncertain under ``policy="ignore"``).

A plain tuple collates with PyTorch's default collate into ``[B, 1, H, W]``, ``[B, L]``, ``[B, L]``.

Augmentation is deliberately mild and anatomically plausible: small rotation (±7° by default, at most 15°),
small translation and scale, brightness / contrast jitter. There is no vertical flip and no 90° turn (a
chest upside down is not a chest X-ray), and horizontal flips are **off by default**: mirroring moves the
heart to the right (dextrocardia, ~1 in 10,000 people), breaks findings defined by side such as
Cardiomegaly's left-sided silhouette, and mirrors the laterality markers. Enable them with ``hflip=True``
only if you accept that. Randomness per item comes from ``numpy.random.default_rng([seed, epoch, i])``, so a
run is reproducible and resumable whatever the number of workers; the same position drawn twice in one
epoch gets the same augmentation.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxr_tools.data.cache import CacheReader, open_cache
from cxr_tools.data.labels import apply_uncertainty
from cxr_tools.errors import ConfigError, DataError

NORMALIZATIONS: tuple[str, ...] = ("unit", "xrv")
XRV_RANGE = 1024.0

_LIMITS = {"rotate_deg": 15.0, "translate": 0.2, "scale": 0.3, "brightness": 0.5, "contrast": 0.5}


def normalize_image(image: np.ndarray, kind: str = "unit") -> np.ndarray:
    """Map 8-bit intensities (uint8 or float in [0, 255]) to the model's input range, as float32."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    if kind == "unit":
        return x
    if kind == "xrv":
        return (2.0 * x - 1.0) * XRV_RANGE
    raise ConfigError(f"Unknown normalisation '{kind}'.", f"Use one of: {', '.join(NORMALIZATIONS)}.")


@dataclass(frozen=True)
class Augment:
    """Light, anatomically plausible augmentation of a uint8 [H, W] image (see the module docstring).

    Attributes:
        rotate_deg: maximum absolute rotation in degrees (uniform in ±rotate_deg; at most 15).
        translate: maximum shift as a fraction of the image side, per axis.
        scale: maximum relative zoom (uniform in 1 ± scale).
        brightness: maximum additive shift as a fraction of the 0–255 range.
        contrast: maximum relative contrast change around the image mean.
        hflip: mirror left-right with probability 0.5 (off by default: dextrocardia).
    """

    rotate_deg: float = 7.0
    translate: float = 0.05
    scale: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False

    def __post_init__(self) -> None:
        for name, limit in _LIMITS.items():
            value = float(getattr(self, name))
            if not 0 <= value <= limit:
                raise ConfigError(
                    f"Augmentation {name}={value:g} is outside [0, {limit:g}].",
                    "Larger changes are not anatomically plausible for chest X-rays.",
                )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The augmented image as float32 [H, W] in [0, 255]; all draws come from ``rng``."""
        import cv2

        h, w = image.shape
        angle, zoom, tx, ty, flip, c, b = rng.uniform(-1.0, 1.0, size=7)
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle * self.rotate_deg, 1 + zoom * self.scale)
        matrix[0, 2] += tx * self.translate * w
        matrix[1, 2] += ty * self.translate * h
        out = cv2.warpAffine(
            np.ascontiguousarray(image, dtype=np.uint8),
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        ).astype(np.float32)
        if self.hflip and flip > 0:
            out = np.ascontiguousarray(out[:, ::-1])
        mean = float(out.mean())
        out = (out - mean) * (1.0 + c * self.contrast) + mean + b * self.brightness * 255.0
        return np.clip(out, 0.0, 255.0)


def resolve_rows(cache: CacheReader, rows: str | Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Cache rows selected by ``rows``: None / ``"all"`` = every row, a split name, or explicit rows."""
    n = len(cache)
    if rows is None or (isinstance(rows, str) and rows == "all"):
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, str):
        split = cache.index["split"].astype(str).str.strip().str.lower().to_numpy()
        selected = np.flatnonzero(split == rows.lower()).astype(np.int64)
        if len(selected) == 0:
            present = sorted({s for s in split if s})
            raise DataError(
                f"Cache {cache.path} has no images in split '{rows}'.",
                f"Its splits: {', '.join(present) or 'none'}; choose one of those or recreate the split.",
            )
        return selected
    out = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(out) and (out.min() < 0 or out.max() >= n):
        raise DataError(f"Row numbers must be within 0..{n - 1} for cache {cache.path}.")
    return out


class CacheDataset(Dataset):  # type: ignore[type-arg]
    """Items ``(image [1,H,W] float32, targets [L] float32, mask [L] bool)`` from a cache (module docstring).

    Args:
        cache: a :class:`CacheReader` or the cache directory.
        rows: None (all), a split name (``train``/``val``/``test``) or explicit cache rows.
        labels: label columns, in target order (default: the cache's label space).
        policy: uncertainty policy (``ignore``, ``zeros``, ``ones``), applied at load time.
        normalize: ``unit`` ([0, 1]) or ``xrv`` ([-1024, 1024]).
        augment: an :class:`Augment`, or None for none (evaluation).
        seed: seed of the per-item augmentation generators.

    Picklable for DataLoader workers: the image store is (re)opened lazily in each process.
    """

    def __init__(
        self,
        cache: CacheReader | str | Path,
        rows: str | Sequence[int] | np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        policy: str = "ignore",
        normalize: str = "unit",
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.cache = cache if isinstance(cache, CacheReader) else open_cache(cache)
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"Unknown normalisation '{normalize}'.", f"Use one of: {', '.join(NORMALIZATIONS)}.")
        self.labels: tuple[str, ...] = tuple(labels) if labels is not None else tuple(self.cache.labels)
        self.rows = resolve_rows(self.cache, rows)
        raw = self.cache.raw_labels(self.labels)[self.rows]
        self.targets, self.mask = apply_uncertainty(raw, policy)
        self.policy = policy
        self.normalize = normalize
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self._pid = os.getpid()
        self._inherited: list[CacheReader] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def _reader(self) -> CacheReader:
        if os.getpid() != self._pid:
            # A forked worker must not use the parent's open HDF5 handle: take a fresh, lazily opened copy
            # (copy.copy goes through CacheReader.__getstate__) and keep the inherited one alive, untouched.
            self._inherited.append(self.cache)
            self.cache = copy.copy(self.cache)
            self._pid = os.getpid()
        return self.cache

    def image(self, i: int) -> np.ndarray:
        """Item ``i``'s image as float32 [H, W] after augmentation and normalisation."""
        raw = self._reader()[int(self.rows[i])]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            raw = self.augment(raw, rng)
        return normalize_image(raw, self.normalize)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a dataset of {len(self)}")
        i %= len(self)
        image = torch.from_numpy(np.ascontiguousarray(self.image(i))[None])
        return image, torch.from_numpy(self.targets[i].copy()), torch.from_numpy(self.mask[i].copy())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_inherited"] = []
        return state


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from torch's per-worker seed; one cv2 thread."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass


def make_loader(
    dataset: Dataset,  # type: ignore[type-arg]
    batch_size: int,
    sampler: Sampler | None = None,  # type: ignore[type-arg]
    workers: int = 0,
    seed: int = 0,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:  # type: ignore[type-arg]
    """A DataLoader whose order and worker seeds follow ``seed`` (and the sampler's own seed, if any).

    Workers are not persistent, so ``dataset.set_epoch(e)`` before each epoch reaches them.
    """
    if batch_size < 1:
        raise ConfigError(f"Batch size must be at least 1 (got {batch_size}).")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0 (got {workers}).")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=workers,
        generator=generator,
        worker_init_fn=seed_worker,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
