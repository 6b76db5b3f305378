"""The measuring loops of ``cxr evaluate`` (docs/science.md); the files they fill are written by
:mod:`cxr_tools.engine.evaluate.summary`.

* **Per episode**, the method (:mod:`cxr_tools.methods.adapters`) adapts to the support set (its randomness,
  e.g. a fresh head, from the generator ``(seed, i)``) and scores the queries in eval mode, batch-independently.
  Per episode class: AUC and AP (threshold-free), F1 / precision / recall at the threshold of the rule
  (:mod:`cxr_tools.eval.thresholds`: with ``support``, chosen per class on the support set's own scores after
  adaptation, never on the queries; saved as ``threshold`` in episodes.csv and scores.csv).
* **Siamese runs** also get the pair AUC and the similarity accuracy (at the run's validation threshold) on a
  fixed balanced pair set from the meta-test pool (:class:`~cxr_tools.data.sampling.pairs.PairSampler`), embedded with
  :func:`~cxr_tools.models.siamese.embedder`.

Episode ``i`` draws its randomness from ``(seed, i)`` alone and the pair set from its own seed key, so results
do not depend on an interruption (:mod:`cxr_tools.engine.evaluate.journal`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxr_tools.data.sampling.pairs import PairSampler
from cxr_tools.eval.metrics import class_metrics, episode_metrics, mean_ci
from cxr_tools.eval.thresholds import episode_thresholds
from cxr_tools.methods.episodes import episode_tensors
from cxr_tools.models.inputs import to_model_input
from cxr_tools.models.siamese import embedder, similarity, trained_distance
from cxr_tools.runtime.progress import Progress
from cxr_tools.runtime.seeding import make_generator, numpy_generator

if TYPE_CHECKING:
    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode
    from cxr_tools.data.splits.meta import MetaSplit
    from cxr_tools.engine.evaluate.journal import EpisodeJournal
    from cxr_tools.eval.thresholds import ThresholdRule
    from cxr_tools.methods.embedding_cache import EpisodeFeatures

PAIR_KEY = 104729  # seed key of the Siamese pair set, apart from the episodes' (seed, i)


def run_episodes(
    adapter: Any,
    cache: CacheReader,
    episodes: Sequence[Episode],
    normalisation: str,
    device: Any,
    seed: int,
    rule: ThresholdRule,
    progress: Progress,
    journal: EpisodeJournal,
    features: EpisodeFeatures | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Adapt and score every episode (reusing the journal's finished ones): ``episodes.csv`` and ``scores.csv``
    rows in episode order. The thresholds of ``rule`` come from the support set's scores alone.

    With ``features`` (a frozen-feature method), the images of every episode left to run are embedded once
    (or found in its store) and each episode indexes their rows: the same scores, without embedding an image
    again per episode (:mod:`cxr_tools.methods.embedding_cache`)."""

    records: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    aucs: list[float] = []
    if features is not None:
        features.prepare([ep for i, ep in enumerate(episodes) if i not in journal.done], progress)
    with progress.task("evaluate", total=len(episodes)) as task:
        for i, ep in enumerate(episodes):
            if i in journal.done:
                done_records, done_scores = journal.done[i]
                records += done_records
                scores += done_scores
                aucs.append(float(np.nanmean([r["auc"] for r in done_records])))
                task.advance()
                continue
            # generalized episodes: a method that knows the seen classes (a trained head) scores them from that
            fitter = adapter.with_seen(ep.seen) if ep.seen and hasattr(adapter, "with_seen") else adapter
            if features is not None:
                sx, sy, qx = features.tensors(ep)
                scorer = fitter.fit_features(sx, sy, generator=make_generator(seed, i))
            else:
                sx, sy, qx, _ = episode_tensors(cache, ep, normalisation, device)
                scorer = fitter.fit(sx, sy, generator=make_generator(seed, i))
            probs = scorer.predict(qx).numpy().astype(np.float64)
            cuts = None
            if rule.thresholded:
                support_probs = scorer.support_scores(sx, sy).numpy().astype(np.float64)
                cuts = episode_thresholds(rule, sy.detach().float().cpu().numpy(), support_probs)
            per_class = episode_metrics(ep.query_targets, probs, ep.classes, cuts)
            ep_records: list[dict[str, Any]] = []
            ep_scores: list[dict[str, Any]] = []
            for j, cls in enumerate(ep.classes):
                y = ep.query_targets[:, j]
                cut = {} if cuts is None else {"threshold": float(cuts[j])}
                group = {"group": "seen" if cls in ep.seen else "unseen"} if ep.seen else {}
                ep_records.append(
                    {
                        "episode": i,
                        "class": cls,
                        **group,
                        "positives": int(y.sum()),
                        "negatives": int(len(y) - y.sum()),
                        **cut,
                        **per_class[cls],
                    }
                )
                ep_scores += [
                    {"episode": i, "class": cls, "row": int(r), "target": int(t), "score": float(s), **cut}
                    for r, t, s in zip(ep.query_rows, y, probs[:, j], strict=True)
                ]
            journal.add(i, ep_records, ep_scores)
            records += ep_records
            scores += ep_scores
            aucs.append(float(np.nanmean([m["auc"] for m in per_class.values()])))
            task.advance()
            if (i + 1) % 10 == 0 or i + 1 == len(episodes):
                task.set_postfix(f"auc={np.nanmean(aucs):.3f}")
    return records, scores


def pair_metrics(
    model: Any,
    meta: Mapping[str, Any],
    cache: CacheReader,
    split: MetaSplit,
    pool: np.ndarray,
    normalisation: str,
    device: Any,
    count: int,
    seed: int,
    progress: Progress,
) -> dict[str, Any]:
    """Pair AUC and similarity accuracy of a Siamese run on a fixed balanced pair set from the meta-test pool."""

    extra = dict(meta.get("extra") or {})
    rule = str(extra.get("pair_rule") or "same-set")
    sampler = PairSampler(cache.index, list(split.test), rows=pool, rule=rule)
    pairs = sampler.sample(count, numpy_generator(seed, PAIR_KEY))
    rows = pairs.rows()
    model.eval()
    embed = embedder(model, meta)
    chunks = []
    with progress.task("pairs", total=len(rows)) as task, torch.no_grad():
        for start in range(0, len(rows), 256):
            x = to_model_input(cache.read(rows[start : start + 256]), normalisation, device)
            chunks.append(embed(x).cpu())
            task.advance(min(256, len(rows) - start))
    emb = torch.cat(chunks)
    where = np.searchsorted(rows, pairs.left), np.searchsorted(rows, pairs.right)
    distance = trained_distance(meta) or "cosine"
    sims = similarity(emb[where[0]], emb[where[1]], distance).numpy().astype(np.float64)
    run_threshold = extra.get("threshold")
    threshold = float(run_threshold) if run_threshold is not None else 0.5
    correct = ((sims >= threshold) == (pairs.target > 0.5)).astype(np.float64)
    acc = mean_ci(correct)
    return {
        "pairs": len(pairs),
        "positives": int(pairs.target.sum()),
        "pair_rule": rule,
        "pairs_hash": pairs.digest(),
        "pair_auc": class_metrics(pairs.target, sims)["auc"],
        "accuracy": acc.mean,
        "accuracy_ci95": acc.ci95,
        "threshold": threshold,
        "threshold_source": "the run's validation threshold" if run_threshold is not None else "default 0.5",
    }
