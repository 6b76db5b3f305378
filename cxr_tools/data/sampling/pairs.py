"""Seeded, balanced image pairs for Siamese training, drawn from the cache index alone (never from images).

Rules (``--pair-rule``) for when two images form a *positive* (similar) pair:

* ``same-set`` (default): their sets of findings are identical, over the label columns in use ("No
  Finding" images pair with each other);
* ``shares-finding``: they share at least one finding, or both have none ("No Finding" counts as a
  finding of its own here, so a normal image is never similar to an abnormal one).

Everything else is a negative pair. What the sampler guarantees:

* never two images of the same patient in a pair (a patient's follow-up images would make positives
  trivially easy, and a network would learn the patient instead of the finding);
* frontal views only (``view`` PA, AP or empty) by default: a lateral and a frontal view of the same
  finding look nothing alike;
* images with an *uncertain* (-1) value in a label in use are left out: their label set is a guess;
* every batch of ``n`` pairs holds ``n // 2`` positives and ``n - n // 2`` negatives, in random order;
* every draw comes from the ``numpy.random.Generator`` passed in: the same generator state gives the same
  pairs. A fixed validation set is ``sample(n, numpy.random.default_rng([seed, ...]))``.

Anchors of positive pairs are drawn uniformly among images that have at least one possible partner;
partners uniformly among the anchor's possible partners (by rejection, falling back to an exact search).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_tools.errors import DataError

PAIR_RULES: tuple[str, ...] = ("same-set", "shares-finding")
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP", "")
_ROUNDS = 8  # vectorised rejection rounds before the exact per-anchor search


@dataclass(frozen=True)
class PairSet:
    """Pairs of cache rows and their targets (1 = similar)."""

    left: np.ndarray
    right: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def rows(self) -> np.ndarray:
        """The distinct cache rows used by the pairs, sorted."""
        return np.unique(np.concatenate([self.left, self.right]))

    def digest(self) -> str:
        """A short hash identifying the pair list exactly (recorded with a run's validation metrics)."""
        h = hashlib.sha256()
        for arr in (self.left, self.right, self.target):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def take(self, positions: Any) -> PairSet:
        """The pairs at ``positions``."""
        idx = np.asarray(positions, dtype=np.int64)
        return PairSet(self.left[idx], self.right[idx], self.target[idx])


def frontal_rows(index: Any, views: Sequence[str] | None = FRONTAL_VIEWS) -> np.ndarray:
    """Bool mask of index rows whose ``view`` is one of ``views`` (case-insensitive; None = every view)."""
    if views is None:
        return np.ones(len(index), dtype=bool)
    wanted = {v.strip().upper() for v in views}
    col = index["view"].fillna("").astype(str).str.strip().str.upper() if "view" in index.columns else None
    if col is None:
        return np.full(len(index), "" in wanted)
    return col.isin(wanted).to_numpy()


class PairSampler:
    """Draws balanced positive/negative pairs of cache rows (module docstring).

    Args:
        index: the cache index (``row``, ``patient_id``, ``view`` and the label columns, raw values).
        labels: label columns that define an image's finding set.
        rows: cache rows allowed (e.g. one patient split); default all.
        rule: ``same-set`` or ``shares-finding``.
        views: allowed views (default frontal: PA, AP or empty); None allows every view.
    """

    def __init__(
        self,
        index: Any,
        labels: Sequence[str],
        *,
        rows: Sequence[int] | np.ndarray | None = None,
        rule: str = "same-set",
        views: Sequence[str] | None = FRONTAL_VIEWS,
        patient_column: str = "patient_id",
    ) -> None:
        if rule not in PAIR_RULES:
            raise DataError(f"Unknown pair rule '{rule}'.", f"Use one of: {', '.join(PAIR_RULES)}.")
        labels = list(labels)
        if not labels:
            raise DataError("Pairs need at least one label column.")
        missing = [c for c in (patient_column, *labels) if c not in index.columns]
        if missing:
            raise DataError(f"The cache index lacks column(s) {', '.join(missing)}.")
        self.rule = rule
        self.labels = tuple(labels)
        all_rows = index["row"].to_numpy(dtype=np.int64) if "row" in index.columns else np.arange(len(index))
        keep = np.array(frontal_rows(index, views), dtype=bool)
        if rows is not None:
            keep &= np.isin(all_rows, np.asarray(rows, dtype=np.int64))
        raw = index[labels].to_numpy(dtype=np.float32, na_value=np.nan)
        self.uncertain_dropped = int((keep & (raw == -1).any(axis=1)).sum())
        keep &= ~(raw == -1).any(axis=1)
        self.rows = all_rows[keep]
        self.multi_hot = raw[keep] == 1
        pids = index[patient_column].fillna("").astype(str).to_numpy(dtype=str)[keep]
        _, self.patients = np.unique(pids, return_inverse=True)
        self.patients = self.patients.astype(np.int64)
        n = len(self.rows)
        if n < 2:
            raise DataError(
                f"Only {n} usable image(s) for pairs (frontal views, no uncertain label).",
                "Use a larger cache or split, or --views all.",
            )
        if len(np.unique(self.patients)) < 2:
            raise DataError("All usable images belong to one patient; pairs need two patients.")
        # Findings as groups: same-set -> one group per distinct label set; shares-finding -> one group per
        # finding plus one for "no finding". Each image belongs to one group (same-set) or several.
        if rule == "same-set":
            _, group_of = np.unique(self.multi_hot, axis=0, return_inverse=True)
            membership = np.zeros((n, int(group_of.max()) + 1), dtype=bool)
            membership[np.arange(n), group_of.reshape(-1)] = True
        else:
            membership = np.concatenate([self.multi_hot, ~self.multi_hot.any(axis=1, keepdims=True)], axis=1)
        self._membership = membership
        groups = [np.flatnonzero(membership[:, g]) for g in range(membership.shape[1])]
        self._members = np.concatenate(groups).astype(np.int64)
        self._sizes = np.array([len(g) for g in groups], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(np.int64)
        # a group offers positives when it spans two patients; an anchor needs one such group
        self._group_ok = np.array([len(np.unique(self.patients[g])) >= 2 for g in groups], dtype=bool)
        self._anchors_pos = np.flatnonzero((membership & self._group_ok[None, :]).any(axis=1))
        if len(self._anchors_pos) == 0:
            raise DataError(
                f"The pair rule '{rule}' yields no positive pair: no two patients share "
                + ("a label set" if rule == "same-set" else "a finding")
                + f" among the {n} usable images.",
                "Try --pair-rule shares-finding, more images, or other --classes.",
            )

    @property
    def num_images(self) -> int:
        return len(self.rows)

    def is_positive(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether local images ``i`` and ``j`` form a positive pair under the rule (elementwise)."""
        return (self._membership[i] & self._membership[j]).any(axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> PairSet:
        """``n`` pairs (``n // 2`` positives first drawn, then shuffled together with the negatives)."""
        if n < 1:
            raise DataError(f"The number of pairs must be at least 1 (got {n}).")
        n_pos = n // 2
        pos_a, pos_b = self._positives(n_pos, rng)
        neg_a, neg_b = self._negatives(n - n_pos, rng)
        a = np.concatenate([pos_a, neg_a])
        b = np.concatenate([pos_b, neg_b])
        y = np.concatenate([np.ones(n_pos, np.float32), np.zeros(n - n_pos, np.float32)])
        order = rng.permutation(n)
        return PairSet(self.rows[a[order]], self.rows[b[order]], y[order])

    # --- drawing --------------------------------------------------------------------------------------------
    def _positives(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        anchors = self._anchors_pos[rng.integers(0, len(self._anchors_pos), size=n)]

        def propose(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            groups = self._pick_group(a, rng)
            offset = np.floor(rng.random(len(groups)) * self._sizes[groups]).astype(np.int64)
            cand = self._members[self._starts[groups] + np.minimum(offset, self._sizes[groups] - 1)]
            return cand, self.patients[cand] != self.patients[a]

        partners, todo = _rejection_rounds(anchors, propose)
        for k in todo:  # exact: every image of another patient that is a positive partner
            a = anchors[k]
            options = np.flatnonzero((self._membership & self._membership[a]).any(axis=1))
            options = options[self.patients[options] != self.patients[a]]
            partners[k] = options[rng.integers(0, len(options))]
        return anchors, partners

    def _pick_group(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One group per anchor, uniformly among its groups that span two patients."""
        usable = self._membership[anchors] & self._group_ok[None, :]
        counts = usable.sum(axis=1)
        pick = np.floor(rng.random(len(anchors)) * counts).astype(np.int64)
        cum = np.cumsum(usable, axis=1)
        return np.argmax(cum > pick[:, None], axis=1)

    def _negatives(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        m = len(self.rows)
        anchors = rng.integers(0, m, size=n)

        def propose(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            cand = rng.integers(0, m, size=len(a))
            return cand, (self.patients[cand] != self.patients[a]) & ~self.is_positive(a, cand)

        partners, todo = _rejection_rounds(anchors, propose)
        for k in todo:  # exact search; an anchor without any negative partner is replaced by another
            for _ in range(100):
                a = anchors[k]
                options = np.flatnonzero(~(self._membership & self._membership[a]).any(axis=1))
                options = options[self.patients[options] != self.patients[a]]
                if len(options):
                    partners[k] = options[rng.integers(0, len(options))]
                    break
                anchors[k] = rng.integers(0, m)
            else:
                raise DataError(
                    f"The pair rule '{self.rule}' yields (almost) no negative pair among {m} images.",
                    "Use more --classes or a cache with more varied findings.",
                )
        return anchors, partners


def _rejection_rounds(
    anchors: np.ndarray, propose: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``_ROUNDS`` vectorised rounds of ``propose(anchors still open) -> (candidates, acceptable)``: the
    partner of every anchor, -1 where none was accepted, and the positions still open (searched exactly)."""
    partners = np.full(len(anchors), -1, dtype=np.int64)
    todo = np.arange(len(anchors))
    for _ in range(_ROUNDS):
        if len(todo) == 0:
            break
        cand, ok = propose(anchors[todo])
        partners[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return partners, todo
