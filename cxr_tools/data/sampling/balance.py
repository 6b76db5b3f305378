"""Class-balanced sampling at sampling time, within one split, and positive-class weights for BCE.

The seed projects balanced classes by writing oversampled *copies* of images before splitting, so copies of
one image ended up in train and test. Here balance is a property of the order in which rows of an already
patient-disjoint split are drawn: no file is copied, and a sampler built on a split's label matrix can only
return positions of that split.

:class:`BalancedSampler` draws, for every sample, one group uniformly at random – a class (rows positive
for it) or the all-negative group (rows with no positive and no masked entry) – then one row of that group
uniformly. Every class and the negatives are thus drawn about equally often as a *group*; multi-label rows
also count for their other classes, so per-class frequencies are roughly, not exactly, equal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from cxr_tools.errors import DataError

log = logging.getLogger(__name__)


def _positives(label_matrix: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(label_matrix, dtype=np.float32)
    if y.ndim != 2:
        raise DataError(f"A label matrix must be 2-D [rows, labels] (got shape {y.shape}).")
    known = ~np.isnan(y)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != y.shape:
            raise DataError(f"The mask has shape {m.shape}, the label matrix {y.shape}.")
        known &= m
    return (y == 1) & known, known


def class_weights(label_matrix: Any, mask: Any = None, *, max_weight: float | None = None) -> np.ndarray:
    """``pos_weight`` per class for ``BCEWithLogitsLoss``: negatives / positives among unmasked entries.

    Classes without positives get 1.0 (their positive term never occurs) and a log warning. ``max_weight``
    caps the weights so a class with a handful of positives cannot dominate the loss.
    """
    pos, known = _positives(label_matrix, mask)
    n_pos = pos.sum(axis=0).astype(np.float64)
    n_neg = (known & ~pos).sum(axis=0).astype(np.float64)
    weights = np.ones(pos.shape[1], dtype=np.float64)
    has = n_pos > 0
    weights[has] = n_neg[has] / n_pos[has]
    if (~has).any():
        log.warning("No positive examples for class index(es) %s; pos_weight 1.0.", np.flatnonzero(~has).tolist())
    if max_weight is not None:
        weights = np.minimum(weights, float(max_weight))
    return weights.astype(np.float32)


class BalancedSampler(Sampler[int]):
    """Draws dataset positions so each class and the all-negative group are equally likely (module docstring).

    Deterministic per ``(seed, epoch)``. After a complete pass the epoch advances by itself; call
    :meth:`set_epoch` to choose it explicitly (e.g. when resuming). :meth:`state_dict` /
    :meth:`load_state_dict` save and restore ``epoch`` and ``position`` (samples already consumed this epoch),
    so a resumed run continues with exactly the remaining draws.

    Args:
        label_matrix: targets [N, L] of the split's rows (1 = positive), e.g. ``LabelledBatches.targets``.
        num_samples: draws per epoch (default N).
        seed: seed of the draws.
        epoch: starting epoch.
        mask: optional bool [N, L], False for entries to ignore (uncertain): such a row is never a negative
            for lack of positives, and a masked 1 does not count as positive.
        negatives: include the all-negative group (default True).
    """

    def __init__(
        self,
        label_matrix: Any,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        epoch: int = 0,
        mask: Any = None,
        negatives: bool = True,
    ) -> None:
        pos, known = _positives(label_matrix, mask)
        n, n_labels = pos.shape
        groups = [np.flatnonzero(pos[:, c]) for c in range(n_labels)]
        self.empty_classes = tuple(int(c) for c in range(n_labels) if len(groups[c]) == 0)
        if negatives:
            groups.append(np.flatnonzero(~pos.any(axis=1) & known.all(axis=1)))
        groups = [g for g in groups if len(g)]
        if not groups:
            raise DataError("Nothing to sample: no row is positive for any class and no row is negative.")
        if self.empty_classes:
            log.warning("Classes with no positive rows are left out of balancing: %s.", list(self.empty_classes))
        self.num_rows = n
        self.num_samples = int(num_samples) if num_samples is not None else n
        if self.num_samples < 1:
            raise DataError(f"num_samples must be at least 1 (got {self.num_samples}).")
        self._members = np.concatenate(groups).astype(np.int64)
        self._sizes = np.array([len(g) for g in groups], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(np.int64)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.position = 0

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """All draws of ``epoch`` (default the current one) as int64 positions."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch)])
        group = rng.integers(0, len(self._sizes), size=self.num_samples)
        offset = np.floor(rng.random(self.num_samples) * self._sizes[group]).astype(np.int64)
        return self._members[self._starts[group] + np.minimum(offset, self._sizes[group] - 1)]

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Choose the epoch (and the number of its samples already consumed)."""
        if not 0 <= position <= self.num_samples:
            raise DataError(f"Sampler position {position} is outside 0..{self.num_samples}.")
        self.epoch = int(epoch)
        self.position = int(position)

    def __iter__(self) -> Iterator[int]:
        draws = self.indices()
        while self.position < self.num_samples:
            k = self.position
            self.position += 1
            yield int(draws[k])
        self.epoch += 1
        self.position = 0

    def __len__(self) -> int:
        return self.num_samples - self.position

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """Resumable state. ``consumed``: samples the training loop has really used this epoch (a DataLoader
        prefetches, so the sampler's own position may run ahead); default the sampler's position."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position if consumed is None else int(consumed),
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`; refuses a state from a different seed or epoch length."""
        if int(state["seed"]) != self.seed or int(state["num_samples"]) != self.num_samples:
            raise DataError(
                f"Sampler state is for seed {state['seed']} and {state['num_samples']} samples per epoch, "
                f"this sampler has seed {self.seed} and {self.num_samples}.",
                "Resume with the same --seed and data, or start a new run.",
            )
        self.set_epoch(int(state["epoch"]), int(state["position"]))
