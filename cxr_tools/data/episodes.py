"""Multi-label few-shot episodes, drawn from the cache index alone (never from images).

An episode (SCIENCE.md §2) with ``ways`` N, ``shots`` K and ``queries`` Q:

* N classes are drawn from the meta-split's class pool;
* the support set holds K images positive for each class plus K *negatives* (images positive for none of the
  N classes), the query set likewise Q per class plus Q negatives; support and query never share an image;
* targets are N-dim multi-hot vectors restricted to the episode's classes (an image drawn as a positive for
  one class may be positive for another episode class too, and its target says so);
* images whose label is *uncertain* (-1) for an episode class are used neither as positives nor as
  negatives of that episode: their target would be a guess.

``ways=1`` is the seeds' binary "one disease, positives vs negatives" task. Every draw takes a
``numpy.random.Generator``; fixed evaluation lists derive episode *i* from ``(seed, i)`` alone, so a list of
600 starts with the same episodes as a list of 100, and :func:`episode_list_hash` identifies a list exactly,
which ``cxr compare`` uses to refuse comparing runs evaluated on different episodes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.errors import DataError
from cxr_tools.runtime.fs import atomic_write_json


@dataclass(frozen=True)
class EpisodeSpec:
    """Shape of an episode."""

    ways: int = 2
    shots: int = 5
    queries: int = 15

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "queries"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be at least 1 (got {getattr(self, name)}).")

    @property
    def images(self) -> int:
        """Support plus query images of one episode: K (then Q) per class plus as many negatives."""
        return (self.ways + 1) * (self.shots + self.queries)


@dataclass(frozen=True)
class Episode:
    """One episode: cache rows and targets for support and query sets.

    Attributes:
        classes: the episode's class names, the order of the target columns.
        support_rows / query_rows: cache rows (int64).
        support_targets / query_targets: float32 [n, ways] multi-hot.
    """

    classes: tuple[str, ...]
    support_rows: np.ndarray
    support_targets: np.ndarray
    query_rows: np.ndarray
    query_targets: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "support_rows": self.support_rows.tolist(),
            "query_rows": self.query_rows.tolist(),
        }


class EpisodeSampler:
    """Draws episodes from one meta-split pool of a cache.

    Args:
        raw_labels: float [N, L] raw cache labels (1, 0, -1, NaN) for ``label_names``.
        label_names: names of the columns of ``raw_labels``.
        classes: the meta-split's classes this sampler may draw (e.g. the meta-test classes).
        pool_rows: cache rows this sampler may use (the meta-split's image pool).
        spec: ways / shots / queries.
    """

    def __init__(
        self,
        raw_labels: np.ndarray,
        label_names: Sequence[str],
        classes: Sequence[str],
        pool_rows: np.ndarray | Sequence[int],
        spec: EpisodeSpec,
    ) -> None:
        names = list(label_names)
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(
                f"Class(es) {', '.join(unknown)} are not in the cache's label space.",
                f"Its labels: {', '.join(names)}.",
            )
        if spec.ways > len(classes):
            raise DataError(
                f"--ways {spec.ways} asks for more classes than the split has ({len(classes)}: {', '.join(classes)}).",
                "Lower --ways or use a split with more classes.",
            )
        self.spec = spec
        self.classes = tuple(classes)
        self.rows = np.asarray(sorted(set(int(r) for r in pool_rows)), dtype=np.int64)
        cols = [names.index(c) for c in self.classes]
        labels = np.asarray(raw_labels, dtype=np.float32)[self.rows][:, cols]
        self._positive = labels == 1  # [pool, C]
        self._uncertain = labels == -1
        need = spec.shots + spec.queries
        counts = self._positive.sum(axis=0)
        short = [(c, int(n)) for c, n in zip(self.classes, counts, strict=True) if n < need]
        if short:
            detail = ", ".join(f"{c}: {n}" for c, n in short)
            raise DataError(
                f"Too few positive images for {spec.shots} shots + {spec.queries} queries ({need} needed) in this "
                f"split: {detail}.",
                "Use fewer --shots/--queries, a larger dataset, or a split without these classes.",
            )
        negatives = (~self._positive & ~self._uncertain).all(axis=1).sum()
        if negatives < need:
            raise DataError(
                f"Too few negative images (none of the split's classes) for {need} per episode: {int(negatives)}.",
                "Use fewer --shots/--queries or a larger dataset.",
            )

    def sample(self, rng: np.random.Generator) -> Episode:
        """Draw one episode."""
        spec = self.spec
        picked = np.sort(rng.choice(len(self.classes), size=spec.ways, replace=False))
        pos = self._positive[:, picked]
        unc = self._uncertain[:, picked]
        used = np.zeros(len(self.rows), dtype=bool)
        support: list[np.ndarray] = []
        query: list[np.ndarray] = []
        for j in range(spec.ways):
            candidates = np.flatnonzero(pos[:, j] & ~used)
            # Uncertain for another episode class: its target for that class would be a guess.
            candidates = candidates[~unc[candidates].any(axis=1)]
            need = spec.shots + spec.queries
            if len(candidates) < need:
                raise DataError(
                    f"Class {self.classes[picked[j]]} has only {len(candidates)} usable positives left in this episode "
                    f"({need} needed).",
                    "Use fewer --shots/--queries or --ways.",
                )
            chosen = rng.choice(candidates, size=need, replace=False)
            used[chosen] = True
            support.append(chosen[: spec.shots])
            query.append(chosen[spec.shots :])
        negatives = np.flatnonzero(~pos.any(axis=1) & ~unc.any(axis=1) & ~used)
        chosen = rng.choice(negatives, size=spec.shots + spec.queries, replace=False)
        support.append(chosen[: spec.shots])
        query.append(chosen[spec.shots :])
        s_idx = np.concatenate(support)
        q_idx = np.concatenate(query)
        return Episode(
            classes=tuple(self.classes[i] for i in picked),
            support_rows=self.rows[s_idx],
            support_targets=pos[s_idx].astype(np.float32),
            query_rows=self.rows[q_idx],
            query_targets=pos[q_idx].astype(np.float32),
        )

    def fixed_list(self, n: int, seed: int) -> list[Episode]:
        """``n`` reproducible episodes: episode ``i`` depends only on ``(seed, i)``."""
        return [self.sample(np.random.default_rng([seed, i])) for i in range(n)]


def episode_list_hash(episodes: Sequence[Episode]) -> str:
    """A stable identifier of an episode list (classes and rows of every episode, in order)."""
    digest = hashlib.sha256()
    for ep in episodes:
        digest.update(json.dumps(ep.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def save_episode_list(path: str | Path, episodes: Sequence[Episode], meta: dict[str, Any]) -> Path:
    """Write an episode list as JSON (atomically) with its hash and the parameters that made it."""
    return atomic_write_json(
        path, {"hash": episode_list_hash(episodes), **meta, "episodes": [ep.to_dict() for ep in episodes]}
    )


def load_episode_list(path: str | Path, raw_labels: np.ndarray, label_names: Sequence[str]) -> list[Episode]:
    """Read an episode list written by :func:`save_episode_list`, rebuilding targets from the labels."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    names = list(label_names)
    out = []
    for item in data["episodes"]:
        cols = [names.index(c) for c in item["classes"]]
        s = np.asarray(item["support_rows"], dtype=np.int64)
        q = np.asarray(item["query_rows"], dtype=np.int64)
        lab = np.asarray(raw_labels, dtype=np.float32)[:, cols] == 1
        out.append(Episode(tuple(item["classes"]), s, lab[s].astype(np.float32), q, lab[q].astype(np.float32)))
    if episode_list_hash(out) != data.get("hash"):
        raise DataError(f"Episode list {path} does not match its hash.", "Regenerate it; do not edit it by hand.")
    return out
