"""Multi-label few-shot episodes, drawn from the cache index alone (never from images).

An episode (docs/science.md) with ``ways`` N, ``shots`` K and ``queries`` Q:

* N classes are drawn from the meta-split's class pool (in split order for evaluation; in a random slot order
  per meta-training task, ``shuffle=True``, so a meta-learned head carries no per-slot bias);
* the support set holds K images positive for each class plus K *negatives*, the query set likewise Q per class
  plus Q negatives. A negative is an image with none of the episode's N classes: other classes of the split may
  be present, so a single-label class-folder dataset (no "No Finding" folder) has negatives too;
* **support and query are patient-disjoint** (positives and negatives alike), and a patient contributes at most
  ``images_per_patient`` images (default 1) to an episode, all on one side and in one slot: follow-up films of
  one patient on both sides inflate every method's AUC;
* targets are N-dim multi-hot vectors restricted to the episode's classes (an image drawn as a positive for
  one class may be positive for another episode class too, and its target says so);
* images whose label is *uncertain* (-1) for an episode class are used neither as positives nor as
  negatives of that episode: their target would be a guess.

Patients are drawn uniformly among those with a usable image (then a random usable image of each), so a patient
with many films is not drawn more often. ``ways=1`` is the seeds' binary "one disease, positives vs negatives"
task. Every draw takes a ``numpy.random.Generator``; fixed evaluation lists derive episode *i* from ``(seed, i)``
alone, so a list of 600 starts with the same episodes as a list of 100. :func:`episode_list_hash` identifies a
list exactly (its format version, the cache fingerprint, ``images_per_patient`` and every episode), which
``cxr compare`` uses to refuse comparing runs evaluated on different episodes. ``cxr evaluate`` passes the
cache's *content* fingerprint (:attr:`~cxr_tools.data.caches.format.CacheReader.fingerprint`: index and pixels, never
timestamps or paths), so a byte-identical re-preprocessed cache gives the same hash. Lists are saved with
:data:`EPISODE_LIST_VERSION`; lists of the old, image-disjoint format (version 1) are refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.errors import DataError
from cxr_tools.runtime.fs import atomic_write_json
from cxr_tools.vocabulary import NO_FINDING

log = logging.getLogger(__name__)

#: Format of saved episode lists. 1 (no ``version`` key): image-disjoint episodes; 2: patient-disjoint, at most
#: ``images_per_patient`` images per patient, hash covering the cache fingerprint.
EPISODE_LIST_VERSION = 2
_MAX_CHECKED_COMBINATIONS = 64  # class combinations checked one by one when the sampler is built
_ATTEMPTS = 20  # draws of an episode's patients before its classes are declared too short
#: Labels that are no finding: generalized episodes neither exclude an image for them nor deny it as a negative.
NOT_FINDINGS: tuple[str, ...] = (NO_FINDING, "Support Devices")


@dataclass(frozen=True)
class EpisodeSpec:
    """Shape of an episode; ``images_per_patient`` caps what one patient contributes to an episode."""

    ways: int = 2
    shots: int = 5
    queries: int = 15
    images_per_patient: int = 1
    seen_ways: int = 0

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "queries", "images_per_patient"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)}).")
        if self.seen_ways < 0:
            raise DataError(f"--seen-ways must be >= 0 (got {self.seen_ways}).")

    @property
    def total_ways(self) -> int:
        """Classes of one episode: ``ways`` unseen plus ``seen_ways`` seen ones."""
        return self.ways + self.seen_ways

    @property
    def images(self) -> int:
        """Support plus query images of one episode: K (then Q) per class plus as many negatives."""
        return (self.total_ways + 1) * (self.shots + self.queries)


@dataclass(frozen=True, kw_only=True)
class EpisodeOptions:
    """The episode options ``cxr meta-train`` and ``cxr evaluate`` share, declared once (docs/science.md).

    Attributes:
        ways, shots, queries: N classes; K support positives per class plus K negatives; Q query positives per
            class plus Q negatives.
        images_per_patient: the most images one patient contributes to an episode (recorded in episode lists).
        meta_split: ``auto`` (a MAML run's split, else the cache's, else MetaChest), ``metachest``, a YAML/JSON
            file or ``"train=A,B;val=C;test=D,E"``.
    """

    ways: int = 2
    shots: int = 5
    queries: int = 15
    images_per_patient: int = 1
    meta_split: str = "auto"

    @property
    def episode_spec(self) -> EpisodeSpec:
        """The :class:`EpisodeSpec` these options describe (checked on creation)."""
        return EpisodeSpec(self.ways, self.shots, self.queries, self.images_per_patient)


@dataclass(frozen=True)
class Episode:
    """One episode: cache rows and targets for support and query sets.

    Attributes:
        classes: the episode's class names, the order of the target columns.
        support_rows / query_rows: cache rows (int64).
        support_targets / query_targets: float32 [n, ways] multi-hot.
        images_per_patient: the cap it was drawn with (part of the list's identity).
        seen: the classes of ``classes`` that are *seen* (meta-train classes of a generalized episode, after the
            unseen ones); empty for a standard episode.
    """

    classes: tuple[str, ...]
    support_rows: np.ndarray
    support_targets: np.ndarray
    query_rows: np.ndarray
    query_targets: np.ndarray
    images_per_patient: int = 1
    seen: tuple[str, ...] = ()

    @property
    def unseen(self) -> tuple[str, ...]:
        """The episode's new (meta-test) classes."""
        return tuple(c for c in self.classes if c not in self.seen)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "classes": list(self.classes),
            "support_rows": self.support_rows.tolist(),
            "query_rows": self.query_rows.tolist(),
        }
        if self.seen:  # absent from standard episodes, so their lists keep their hashes
            out["seen"] = list(self.seen)
        return out


def index_patients(index: Any, column: str = "patient_id") -> np.ndarray:
    """Patient ids (str) aligned with the cache rows of ``index``, as :class:`EpisodeSampler` takes them."""
    if column not in index.columns:
        raise DataError(f"The cache index has no '{column}' column.", "Preprocess the data again with this version.")
    return index[column].fillna("").astype(str).to_numpy(dtype=str)


class EpisodeSampler:
    """Draws episodes from one meta-split pool of a cache.

    Pool rows are stored grouped by patient, and each class keeps the (grouped) list of its positive rows, so
    a draw masks only the candidates of its slots and picks patients with a few vectorised numpy calls.

    Args:
        raw_labels: float [N, L] raw cache labels (1, 0, -1, NaN) for ``label_names``.
        label_names: names of the columns of ``raw_labels``.
        classes: the meta-split's classes this sampler may draw (e.g. the meta-test classes).
        pool_rows: cache rows this sampler may use (the meta-split's image pool).
        spec: ways / shots / queries / images per patient.
        patients: patient id of every cache row (aligned with ``raw_labels``; see :func:`index_patients`).
        drop_short: leave out the classes too few patients carry to fill an episode (logged), as long as
            ``spec.ways`` classes remain: right for the classes a model *learns* from (meta-train, meta-val),
            never for meta-test, where every class must be measured.
    """

    def __init__(
        self,
        raw_labels: np.ndarray,
        label_names: Sequence[str],
        classes: Sequence[str],
        pool_rows: np.ndarray | Sequence[int],
        spec: EpisodeSpec,
        *,
        patients: np.ndarray | Sequence[str],
        drop_short: bool = False,
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
        raw = np.asarray(raw_labels, dtype=np.float32)
        ids = np.asarray(patients, dtype=object).astype(str)
        if len(ids) != len(raw):
            raise DataError(f"{len(ids)} patient ids for {len(raw)} cache rows.", "Report this as a bug.")
        self.spec = spec
        self.classes = tuple(classes)
        rows = np.asarray(sorted(set(int(r) for r in pool_rows)), dtype=np.int64)
        _, patient = np.unique(ids[rows], return_inverse=True)
        order = np.argsort(patient, kind="stable")  # grouped by patient: a patient's rows are contiguous
        self._rows = rows[order]
        self._patient = patient[order].astype(np.int64)
        self._n_patients = int(self._patient.max()) + 1 if len(rows) else 0
        labels = raw[self._rows][:, [names.index(c) for c in self.classes]]
        self._positive = labels == 1  # [pool, C]
        self._uncertain = labels == -1
        self._members = [np.flatnonzero(self._positive[:, j]) for j in range(len(self.classes))]
        self.dropped: tuple[str, ...] = ()
        if drop_short:
            self._drop_short_classes()
        self._check_feasible()

    @property
    def rows(self) -> np.ndarray:
        """The pool's cache rows, sorted."""
        return np.sort(self._rows)

    # --- feasibility --------------------------------------------------------------------------------------------

    def _capacity(self, candidates: np.ndarray) -> tuple[int, int]:
        """``(patients, usable images)`` among ``candidates`` (pool indices), at most ``images_per_patient`` each."""
        counts = np.bincount(self._patient[candidates], minlength=self._n_patients)
        return int((counts > 0).sum()), int(np.minimum(counts, self.spec.images_per_patient).sum())

    def _enough(self, capacity: int) -> bool:
        # A patient straddling the support/query boundary wastes at most images_per_patient - 1 images.
        k = self.spec.images_per_patient
        return capacity >= self.spec.shots + self.spec.queries + k - 1

    def _need_text(self) -> str:
        s, q, k = self.spec.shots, self.spec.queries, self.spec.images_per_patient
        if k == 1:
            return f"{s} shots + {q} queries need {s + q} patients, one image each"
        return f"{s} shots + {q} queries need {s + q + k - 1} images at most {k} per patient"

    def _count_text(self, patients: int, capacity: int) -> str:
        if self.spec.images_per_patient == 1:
            return f"{patients} patients"
        return f"{patients} patients, {capacity} usable images"

    def _drop_short_classes(self) -> None:
        """Keep the classes that can fill an episode's slots, if ``spec.ways`` of them remain (else the check
        below names every short class)."""
        keep = [j for j, members in enumerate(self._members) if self._enough(self._capacity(members)[1])]
        if len(keep) == len(self.classes) or len(keep) < self.spec.ways:
            return
        short = [
            f"{c} ({self._count_text(*self._capacity(self._members[j]))})"
            for j, c in enumerate(self.classes)
            if j not in keep
        ]
        self.dropped = tuple(c for j, c in enumerate(self.classes) if j not in keep)
        self.classes = tuple(self.classes[j] for j in keep)
        self._positive, self._uncertain = self._positive[:, keep], self._uncertain[:, keep]
        self._members = [self._members[j] for j in keep]
        log.warning(
            "Left out of these episodes, too few patients for %s: %s; drawing from %s.",
            self._need_text(),
            "; ".join(short),
            ", ".join(self.classes),
        )

    def _check_feasible(self) -> None:
        """Refuse a pool from which no (or, for few class combinations, not every) episode can be drawn."""
        hint = (
            "Lower --shots/--queries, allow more images per patient (--images-per-patient), or use a larger "
            "dataset or a split without these classes."
        )
        short = []
        for c, members in zip(self.classes, self._members, strict=True):
            patients, capacity = self._capacity(members)
            if not self._enough(capacity):
                short.append(f"{c}: {self._count_text(patients, capacity)}")
        if short:
            raise DataError(f"Too few patients in this split ({self._need_text()}): {'; '.join(short)}.", hint)
        # An image carrying m of the split's classes is a negative only for episodes avoiding all m.
        carried = (self._positive | self._uncertain).sum(axis=1)
        patients, capacity = self._capacity(np.flatnonzero(carried <= len(self.classes) - self.spec.ways))
        if not self._enough(capacity):
            raise DataError(
                f"Too few negatives (images with none of an episode's {self.spec.ways} classes) in this split: "
                f"{self._count_text(patients, capacity)} ({self._need_text()}).",
                "Lower --ways or --shots/--queries, or add images without these classes (e.g. 'No Finding').",
            )
        if math.comb(len(self.classes), self.spec.ways) > _MAX_CHECKED_COMBINATIONS:
            return  # too many combinations: a short one is reported when drawn
        for picked in itertools.combinations(range(len(self.classes)), self.spec.ways):
            problem = self._combination_problem(np.asarray(picked))
            if problem:
                raise DataError(
                    f"Episodes of {' + '.join(self.classes[j] for j in picked)} cannot be drawn: {problem}.",
                    "Lower --shots/--queries or --ways, or use a larger dataset.",
                )

    def _combination_problem(self, picked: np.ndarray) -> str | None:
        """What is short for episodes of classes ``picked``, slot by slot (patients shared by slots not counted)."""
        for j in picked:
            patients, capacity = self._capacity(self._positives(j, picked))
            if not self._enough(capacity):
                return f"{self.classes[j]} has {self._count_text(patients, capacity)} ({self._need_text()})"
        patients, capacity = self._capacity(self._negatives(picked))
        if not self._enough(capacity):
            return f"negatives: {self._count_text(patients, capacity)} ({self._need_text()})"
        return None

    # --- drawing ------------------------------------------------------------------------------------------------

    def _positives(self, j: int, picked: np.ndarray) -> np.ndarray:
        """Pool indices positive for class ``j`` and uncertain for none of the episode's classes ``picked``."""
        members = self._members[j]
        return members[~self._uncertain[members][:, picked].any(axis=1)]

    def _negatives(self, picked: np.ndarray) -> np.ndarray:
        """Pool indices positive and uncertain for none of the episode's classes ``picked``."""
        return np.flatnonzero(~(self._positive[:, picked] | self._uncertain[:, picked]).any(axis=1))

    def _draw_slot(
        self, candidates: np.ndarray, used: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Support and query pool indices of one slot from ``candidates`` (ascending, so grouped by patient),
        patients in ``used`` excluded; marks the patients it takes. None when too few patients are left."""
        s, q, k = self.spec.shots, self.spec.queries, self.spec.images_per_patient
        candidates = candidates[~used[self._patient[candidates]]]
        if not len(candidates):
            return None
        pats = self._patient[candidates]
        first = np.ones(len(pats), dtype=bool)
        first[1:] = pats[1:] != pats[:-1]
        starts = np.flatnonzero(first)
        counts = np.append(starts[1:], len(pats)) - starts
        # Uniform over patients; `s + q` patients always suffice as each gives at least one image.
        sel = rng.choice(len(starts), size=min(s + q, len(starts)), replace=False)
        if k == 1:  # one random usable image of each selected patient
            if len(sel) < s + q:
                return None
            seq = candidates[starts[sel] + (rng.random(len(sel)) * counts[sel]).astype(np.int64)]
            used[self._patient[seq]] = True
            return seq[:s], seq[s:]
        lengths = counts[sel]
        offsets = np.cumsum(lengths) - lengths
        group = np.repeat(np.arange(len(sel)), lengths)
        flat = np.repeat(starts[sel] - offsets, lengths) + np.arange(int(lengths.sum()))
        order = np.lexsort((rng.random(len(flat)), group))  # selected patients in turn, their images shuffled
        seq = candidates[flat[order][np.arange(len(flat)) - offsets[group] < k]]
        ends = np.cumsum(np.minimum(lengths, k))
        last_support = int(np.searchsorted(ends, s))
        if last_support >= len(ends) or ends[-1] - ends[last_support] < q:
            return None
        first_query = int(ends[last_support])  # the query starts with the next patient: sides never share one
        last_query = int(np.searchsorted(ends, first_query + q))
        used[self._patient[candidates[starts[sel[: last_query + 1]]]]] = True
        return seq[:s], seq[first_query : first_query + q]

    def _fill(
        self, slots: list[tuple[str, np.ndarray]], rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[np.ndarray]] | str:
        """Support and query pool indices of every slot, patients never shared; else what fell short."""
        used = np.zeros(self._n_patients, dtype=bool)
        support: list[np.ndarray] = []
        query: list[np.ndarray] = []
        for name, candidates in slots:
            drawn = self._draw_slot(candidates, used, rng)
            if drawn is None:
                left, _ = self._capacity(candidates[~used[self._patient[candidates]]])
                return f"{name} has {left} patients left"
            support.append(drawn[0])
            query.append(drawn[1])
        return support, query

    def _pick(self, rng: np.random.Generator, shuffle: bool) -> np.ndarray:
        """The episode's class indices, in slot order."""
        picked = rng.choice(len(self.classes), size=self.spec.ways, replace=False)
        return picked if shuffle else np.sort(picked)

    def _seen_names(self, picked: np.ndarray) -> tuple[str, ...]:
        """The seen classes among ``picked`` (none in a standard episode)."""
        return ()

    def sample(self, rng: np.random.Generator, shuffle: bool = False) -> Episode:
        """Draw one episode; ``shuffle`` puts its classes in a random slot order (meta-training tasks)."""
        picked = self._pick(rng, shuffle)
        slots = [(f"class {self.classes[j]}", self._positives(j, picked)) for j in picked]
        slots.append(("the negatives", self._negatives(picked)))
        for _ in range(_ATTEMPTS):  # slots compete for patients with several findings: a tight pool may need a redraw
            drawn = self._fill(slots, rng)
            if not isinstance(drawn, str):
                break
        else:
            raise DataError(
                f"An episode of {' + '.join(self.classes[j] for j in picked)}: {drawn} once the other slots drew "
                f"theirs ({self._need_text()}; {_ATTEMPTS} draws tried).",
                "Lower --shots/--queries or --ways, or allow more images per patient (--images-per-patient).",
            )
        support, query = drawn
        s_idx = np.concatenate(support)
        q_idx = np.concatenate(query)
        pos = self._positive[:, picked]
        return Episode(
            classes=tuple(self.classes[j] for j in picked),
            support_rows=self._rows[s_idx],
            support_targets=pos[s_idx].astype(np.float32),
            query_rows=self._rows[q_idx],
            query_targets=pos[q_idx].astype(np.float32),
            images_per_patient=self.spec.images_per_patient,
            seen=self._seen_names(picked),
        )

    def fixed_list(self, n: int, seed: int) -> list[Episode]:
        """``n`` reproducible episodes: episode ``i`` depends only on ``(seed, i)``."""
        return [self.sample(np.random.default_rng([seed, i])) for i in range(n)]


class GeneralizedSampler(EpisodeSampler):
    """Generalized few-shot episodes (MetaChest, Montalvo-Lezama & Fuentes-Pineda 2026): ``spec.ways`` unseen
    classes plus ``spec.seen_ways`` seen ones, drawn from one pool (the meta-test pool at evaluation).

    Following MetaChest's episode generator:

    * an image carrying (positive or uncertain) **any** finding of the cache's label space outside the episode's
      classes is excluded, so a target never hides a finding the episode does not name (:data:`NOT_FINDINGS`,
      "No Finding" and CheXpert's "Support Devices", are not findings);
    * the negatives are "No Finding" images: images carrying no finding at all;
    * every class, seen or unseen, gets ``shots`` support and ``queries`` query positives, patient-disjoint as in
      :class:`EpisodeSampler` (one patient, one side, one slot).

    ``classes`` holds the unseen classes then the seen ones (the target columns' order); episodes put their
    unseen classes first. A seen class is kept when enough patients of this pool (meta-test patients, so a
    meta-train finding is rarer there) have films with that finding alone; the others are left out (logged,
    :attr:`dropped`) as long as ``spec.seen_ways`` remain. An unseen class is never left out.

    Args:
        unseen: the classes the model never learned (meta-test).
        seen: the classes it learned (meta-train).
        (others as :class:`EpisodeSampler`)
    """

    def __init__(
        self,
        raw_labels: np.ndarray,
        label_names: Sequence[str],
        unseen: Sequence[str],
        seen: Sequence[str],
        pool_rows: np.ndarray | Sequence[int],
        spec: EpisodeSpec,
        *,
        patients: np.ndarray | Sequence[str],
    ) -> None:
        if spec.seen_ways < 1:
            raise DataError("Generalized episodes need --seen-ways of at least 1.", "Report this as a bug.")
        if spec.seen_ways > len(seen):
            raise DataError(
                f"--seen-ways {spec.seen_ways} asks for more seen classes than meta-train has ({len(seen)}: "
                f"{', '.join(seen)}).",
                "Lower --seen-ways.",
            )
        shared = sorted(set(unseen) & set(seen))
        if shared:
            raise DataError(f"Class(es) {', '.join(shared)} are both seen and unseen.", "Fix the meta-split.")
        if spec.ways > len(unseen):
            raise DataError(
                f"--ways {spec.ways} asks for more classes than the split has ({len(unseen)}: {', '.join(unseen)}).",
                "Lower --ways or use a split with more classes.",
            )
        self._n_unseen = len(unseen)
        names = list(label_names)
        findings = [j for j, name in enumerate(names) if name not in NOT_FINDINGS]
        raw = np.asarray(raw_labels, dtype=np.float32)
        self._carried_all = ((raw[:, findings] == 1) | (raw[:, findings] == -1)).sum(axis=1)
        super().__init__(raw_labels, label_names, [*unseen, *seen], pool_rows, spec, patients=patients)

    @property
    def unseen(self) -> tuple[str, ...]:
        return self.classes[: self._n_unseen]

    @property
    def seen(self) -> tuple[str, ...]:
        return self.classes[self._n_unseen :]

    # --- candidates: nothing outside the episode's classes --------------------------------------------------------

    def _outside(self, candidates: np.ndarray, picked: np.ndarray) -> np.ndarray:
        """Whether each candidate carries a finding outside the classes ``picked``."""
        inside = (self._positive[candidates][:, picked] | self._uncertain[candidates][:, picked]).sum(axis=1)
        return self._pool_carried[candidates] > inside

    def _positives(self, j: int, picked: np.ndarray) -> np.ndarray:
        members = super()._positives(j, picked)
        return members[~self._outside(members, picked)]

    def _negatives(self, picked: np.ndarray) -> np.ndarray:
        return np.flatnonzero(self._pool_carried == 0)

    def _pick(self, rng: np.random.Generator, shuffle: bool) -> np.ndarray:
        unseen = np.sort(rng.choice(self._n_unseen, size=self.spec.ways, replace=False))
        seen = self._n_unseen + np.sort(rng.choice(len(self.seen), size=self.spec.seen_ways, replace=False))
        return np.concatenate([unseen, seen])

    def _seen_names(self, picked: np.ndarray) -> tuple[str, ...]:
        return tuple(self.classes[j] for j in picked if j >= self._n_unseen)

    # --- feasibility ------------------------------------------------------------------------------------------

    def _check_feasible(self) -> None:
        """Refuse unseen classes or negatives too short to fill an episode; leave out short seen classes."""
        self._pool_carried = self._carried_all[self._rows]
        everything = np.arange(len(self.classes))
        hint = "Lower --shots/--queries or --seen-ways, allow more images per patient, or use a larger dataset."
        capacity = [self._capacity(self._positives(j, everything)) for j in everything]
        short_unseen = [
            f"{self.classes[j]}: {self._count_text(*capacity[j])}"
            for j in range(self._n_unseen)
            if not self._enough(capacity[j][1])
        ]
        if short_unseen:
            raise DataError(
                f"Too few patients with only episode findings for generalized episodes ({self._need_text()}): "
                f"{'; '.join(short_unseen)}.",
                hint,
            )
        # A seen class is kept when enough patients have films with that finding alone: those films suit every
        # episode with the class and no other slot can take them, so its slots always fill.
        alone = {j: self._capacity(self._positives(j, np.asarray([j]))) for j in everything[self._n_unseen :]}
        keep = [j for j in alone if self._enough(alone[j][1])]
        if len(keep) < self.spec.seen_ways:
            short = [f"{self.classes[j]}: {self._count_text(*alone[j])}" for j in alone]
            raise DataError(
                f"Too few seen (meta-train) classes have enough patients in this pool with films of that finding "
                f"alone for {self.spec.seen_ways} seen ways ({self._need_text()}): {'; '.join(short)}.",
                hint,
            )
        if len(keep) < len(self.classes) - self._n_unseen:
            self.dropped = tuple(c for j, c in enumerate(self.classes) if j >= self._n_unseen and j not in keep)
            log.warning(
                "Seen classes left out of these episodes, too few patients with films of that finding alone: %s.",
                ", ".join(self.dropped),
            )
            cols = [*range(self._n_unseen), *keep]
            self.classes = tuple(self.classes[j] for j in cols)
            self._positive, self._uncertain = self._positive[:, cols], self._uncertain[:, cols]
            self._members = [self._members[j] for j in cols]
        patients, negatives = self._capacity(self._negatives(everything))
        if not self._enough(negatives):
            raise DataError(
                f"Too few 'No Finding' images (no finding at all) for the negatives: "
                f"{self._count_text(patients, negatives)} ({self._need_text()}).",
                "Use a dataset with 'No Finding' images, or lower --shots/--queries.",
            )
        n_seen = len(self.classes) - self._n_unseen
        if (
            math.comb(self._n_unseen, self.spec.ways) * math.comb(n_seen, self.spec.seen_ways)
            > _MAX_CHECKED_COMBINATIONS
        ):
            return  # too many combinations: a short one is reported when drawn
        for unseen in itertools.combinations(range(self._n_unseen), self.spec.ways):
            for seen in itertools.combinations(range(self._n_unseen, len(self.classes)), self.spec.seen_ways):
                picked = np.asarray([*unseen, *seen])
                problem = self._combination_problem(picked)
                if problem:
                    raise DataError(
                        f"Generalized episodes of {' + '.join(self.classes[j] for j in picked)} cannot be drawn: "
                        f"{problem}.",
                        hint,
                    )


def episode_list_hash(episodes: Sequence[Episode], fingerprint: str) -> str:
    """A stable identifier of an episode list: format version, cache ``fingerprint`` (its content fingerprint at
    evaluation), and the classes, rows and images-per-patient cap of every episode, in order."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": EPISODE_LIST_VERSION, "cache": fingerprint}, sort_keys=True).encode())
    for ep in episodes:
        digest.update(
            json.dumps({**ep.to_dict(), "images_per_patient": ep.images_per_patient}, sort_keys=True).encode()
        )
    return digest.hexdigest()[:16]


def _list_images_per_patient(episodes: Sequence[Episode]) -> int:
    caps = {ep.images_per_patient for ep in episodes}
    if len(caps) > 1:
        raise DataError(f"An episode list mixes images-per-patient caps {sorted(caps)}.", "Report this as a bug.")
    return caps.pop() if caps else 1


def save_episode_list(path: str | Path, episodes: Sequence[Episode], meta: dict[str, Any], *, fingerprint: str) -> Path:
    """Write an episode list as JSON (atomically): format version, hash, cache fingerprint, images per patient,
    the parameters that made it (``meta``) and the episodes."""
    head = {
        "version": EPISODE_LIST_VERSION,
        "hash": episode_list_hash(episodes, fingerprint),
        "cache_fingerprint": fingerprint,
        "images_per_patient": _list_images_per_patient(episodes),
    }
    return atomic_write_json(path, {**meta, **head, "episodes": [ep.to_dict() for ep in episodes]})


def check_list_version(data: dict[str, Any], path: str | Path) -> None:
    """Refuse an episode list of another format version (old lists were image-, not patient-disjoint)."""
    version = data.get("version", 1)
    if version == EPISODE_LIST_VERSION:
        return
    if isinstance(version, int) and version > EPISODE_LIST_VERSION:
        raise DataError(
            f"Episode list {path} has format version {version}, newer than this cxr-tools reads "
            f"({EPISODE_LIST_VERSION}).",
            "Upgrade cxr-tools.",
        )
    raise DataError(
        f"Episode list {path} was made the old way (format version {version}: episodes kept images, not patients, "
        "apart, so a patient could be on both sides).",
        "Re-evaluate (cxr evaluate ... --overwrite) to draw patient-disjoint episodes.",
    )


def load_episode_list(
    path: str | Path, raw_labels: np.ndarray, label_names: Sequence[str], *, fingerprint: str | None = None
) -> list[Episode]:
    """Read an episode list written by :func:`save_episode_list`, rebuilding targets from the labels; refuse an
    old-format list, a tampered one, and (given ``fingerprint``) one drawn from another cache."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    check_list_version(data, path)
    recorded = str(data.get("cache_fingerprint", data.get("cache_manifest_hash")))  # the key before content hashes
    if fingerprint is not None and recorded != fingerprint:
        raise DataError(
            f"Episode list {path} was drawn from another cache (fingerprint {recorded}, this cache {fingerprint}).",
            "Re-evaluate on this cache (--overwrite) to draw its episodes.",
        )
    names = list(label_names)
    cap = int(data.get("images_per_patient", 1))
    lab_all = np.asarray(raw_labels, dtype=np.float32)
    out = []
    for item in data["episodes"]:
        cols = [names.index(c) for c in item["classes"]]
        s = np.asarray(item["support_rows"], dtype=np.int64)
        q = np.asarray(item["query_rows"], dtype=np.int64)
        lab = lab_all[:, cols] == 1
        seen = tuple(item.get("seen") or ())
        out.append(
            Episode(tuple(item["classes"]), s, lab[s].astype(np.float32), q, lab[q].astype(np.float32), cap, seen)
        )
    if episode_list_hash(out, recorded) != data.get("hash"):
        raise DataError(f"Episode list {path} does not match its hash.", "Regenerate it; do not edit it by hand.")
    return out
