"""The one batch loader of the trainers: cache rows -> ``[B, 1, H, W]`` float32 images in [0, 1], augmented.

:class:`CacheImages` reads a batch of cache rows in one call and augments each image with a generator seeded by
``(seed, epoch, *key)``, so a batch is the same whichever process or DataLoader worker builds it and whenever
(bit-identical resume). :class:`LabelledBatches` (``cxr train``) and :class:`PairBatches` (``cxr train-siamese``)
are map-style datasets keyed by ``(epoch, positions)``; :func:`plan_batches` splits each global batch over the
DDP ranks and :func:`make_batch_loader` prefetches the keys in order with worker processes. The [0, 1] images
are mapped to the model's input range by the model contract's one function
(:func:`cxr_tools.models.registry.normalise`, also used by :func:`cxr_tools.models.inputs.to_model_input`).

Augmentation is deliberately mild and anatomically plausible: small rotation (±7° by default, at most 15°),
small translation and scale, brightness / contrast jitter. There is no vertical flip and no 90° turn (a
chest upside down is not a chest X-ray), and horizontal flips are **off by default**: mirroring moves the
heart to the right (dextrocardia, ~1 in 10,000 people), breaks findings defined by side such as
Cardiomegaly's left-sided silhouette, and mirrors the laterality markers. Enable them with ``hflip=True``
only if you accept that.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.runtime.distributed import DistInfo

_LIMITS = {"rotate_deg": 15.0, "translate": 0.2, "scale": 0.3, "brightness": 0.5, "contrast": 0.5}
_UNIT = np.float32(1 / 255.0)


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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from torch's per-worker seed; one cv2 thread."""
    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass


def batch_count(n: int, batch_size: int, world_size: int) -> int:
    """Global batches of an epoch of ``n`` images: full batches, plus the rest when it gives two images a rank."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world_size else 0)


def plan_batches(order: np.ndarray, batch_size: int, dist: DistInfo) -> list[np.ndarray]:
    """This rank's share of every global batch of ``order``.

    A last batch smaller than two images per rank is dropped: BatchNorm cannot normalise one image whose
    feature map is 1 x 1, and a rank without images would hang the gradient all-reduce.
    """
    count = batch_count(len(order), batch_size, dist.world_size)
    out = []
    for b in range(count):
        batch = np.asarray(order[b * batch_size : (b + 1) * batch_size], dtype=np.int64)
        out.append(batch[dist.rank :: dist.world_size])
    return out


def make_batch_loader(dataset: Any, keys: list[Any], workers: int, device: torch.device) -> Any:
    """A DataLoader yielding ``dataset[key]`` for each key in order (``workers`` processes prefetch).

    With workers, OpenCV's own thread pool is shrunk to one thread in this process first: workers are
    forked, and a child forked while the parent holds a pool of OpenCV threads (from augmenting in-process
    earlier, e.g. validation or a previous run) deadlocks in its first ``cv2.warpAffine``. The images are
    small; OpenCV threads gain nothing here.
    """
    from torch.utils.data import DataLoader

    if workers:
        import cv2

        cv2.setNumThreads(1)

    return DataLoader(
        dataset,
        sampler=keys,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=seed_worker if workers else None,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


class CacheImages:
    """Reads batches of cache rows as float32 ``[B, 1, H, W]`` in [0, 1], augmented per key.

    The augmentation of an image depends only on ``(seed, epoch, *key)``. Safe in forked DataLoader workers:
    each process opens its own handle on the image store.
    """

    def __init__(self, cache: CacheReader, augment: Augment | None, seed: int) -> None:
        self.cache = cache
        self.augment = augment
        self.seed = int(seed)
        self._pid = os.getpid()
        self._inherited: list[Any] = []

    def _reader(self) -> CacheReader:
        if os.getpid() != self._pid:
            # A forked worker must not use the parent's open HDF5 handle: take a fresh, lazily opened copy
            # (copy.copy goes through CacheReader.__getstate__) and keep the inherited one alive, untouched.
            self._inherited.append(self.cache)
            self.cache = copy.copy(self.cache)
            self._pid = os.getpid()
        return self.cache

    def load(self, rows: np.ndarray, epoch: int, keys: np.ndarray | None) -> np.ndarray:
        """Images of ``rows``; ``keys[k]`` (a row of ints) seeds image k's augmentation with seed and epoch.

        Without an augmentation or keys the images are only scaled to [0, 1] (validation).
        """
        raw = self._reader().read(rows)
        out = np.empty((len(rows), 1, *raw.shape[1:]), dtype=np.float32)
        if self.augment is None or keys is None:
            np.multiply(raw, _UNIT, out=out[:, 0], casting="unsafe")
            return out
        for k in range(len(rows)):
            rng = np.random.default_rng([self.seed, int(epoch), *(int(v) for v in keys[k])])
            out[k, 0] = self.augment(raw[k], rng) * _UNIT
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_inherited"] = []
        return state


class LabelledBatches:
    """Map-style dataset: ``(epoch, positions)`` -> ``(images, targets, mask)`` of those positions of ``rows``.

    ``targets`` and ``mask`` are aligned with ``rows`` (after the uncertainty policy,
    :func:`~cxr_tools.data.labels.apply_uncertainty`); image k is augmented from ``(seed, epoch, position)``.
    """

    def __init__(
        self,
        cache: CacheReader,
        rows: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray,
        augment: Augment | None,
        seed: int,
    ) -> None:
        self.images = CacheImages(cache, augment, seed)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.mask = np.asarray(mask, dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        epoch, positions = key
        positions = np.asarray(positions, dtype=np.int64)
        x = self.images.load(self.rows[positions], epoch, positions[:, None])
        return torch.from_numpy(x), torch.from_numpy(self.targets[positions]), torch.from_numpy(self.mask[positions])


class EpochPairs:
    """The training pairs of an epoch: ``per_epoch`` pairs drawn by ``sampler`` from ``numpy_generator(seed,
    epoch)`` (a picklable ``pairs_fn`` of :class:`PairBatches`)."""

    def __init__(self, sampler: Any, per_epoch: int, seed: int) -> None:
        self.sampler, self.per_epoch, self.seed = sampler, int(per_epoch), int(seed)

    def __call__(self, epoch: int) -> Any:
        from cxr_tools.runtime.seeding import numpy_generator

        return self.sampler.sample(self.per_epoch, numpy_generator(self.seed, epoch))


class PairBatches:
    """Map-style dataset: ``(epoch, pair positions)`` -> ``(left images, right images, targets)``.

    ``pairs_fn(epoch)`` returns the epoch's pairs (a :class:`~cxr_tools.data.sampling.pairs.PairSet`); it is called on
    first use in each process and cached, one epoch at a time. Side ``s`` of pair ``p`` is augmented from
    ``(seed, epoch, p, s)``.
    """

    def __init__(self, images: CacheImages, pairs_fn: Callable[[int], Any]) -> None:
        self.images = images
        self.pairs_fn = pairs_fn
        self._epoch: int | None = None
        self._pairs: Any = None

    def pairs(self, epoch: int) -> Any:
        if self._epoch != epoch:
            self._pairs, self._epoch = self.pairs_fn(epoch), epoch
        return self._pairs

    def __getitem__(self, key: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        epoch, positions = key
        positions = np.asarray(positions, dtype=np.int64)
        pairs = self.pairs(epoch).take(positions)
        side = np.ones((len(positions), 1), dtype=np.int64)
        xa = self.images.load(pairs.left, epoch, np.concatenate([positions[:, None], 0 * side], axis=1))
        xb = self.images.load(pairs.right, epoch, np.concatenate([positions[:, None], side], axis=1))
        return torch.from_numpy(xa), torch.from_numpy(xb), torch.from_numpy(pairs.target)
