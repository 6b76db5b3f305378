"""Engine of ``cxr evaluate RUN --data CACHE``: few-shot evaluation on the meta-test classes (docs/science.md).

* **Same episodes for every method.** The meta-split (``--meta-split``; ``auto`` = the MAML run's split, else
  the cache's ``meta_split.json``, else MetaChest) and its disjoint pools (pool seed: the run's, else 0) give the
  meta-test classes and pool; episode ``i`` is drawn from ``(seed, i)`` alone. The list depends on the cache,
  split, pool seed, ways/shots/queries and seed — never on the method or the run — and is saved with its hash as
  ``episodes.json``; ``cxr compare`` refuses evaluations whose hashes differ.
* **Per episode** the method adapts and scores (:mod:`cxr_tools.engine.evaluate.episodes`); aggregates per class and
  overall (the unit ``cxr compare`` pairs on); Siamese runs also get pair metrics.
* **Generalized episodes** (``seen_ways``; MetaChest, docs/science.md): ``seen_ways`` meta-train classes join the
  ``ways`` meta-test ones, images still from the meta-test pool
  (:class:`~cxr_tools.data.sampling.episodes.GeneralizedSampler`); a supervised run scores them with its trained head
  (:meth:`~cxr_tools.methods.finetune.FinetuneAdapter.with_seen`); summary.json adds ``generalized`` (seen,
  unseen, harmonic mean per metric, :func:`~cxr_tools.eval.report.generalized_summary`).
* **Thresholds** (``threshold``, :mod:`cxr_tools.eval.thresholds`): ``support`` (default) chooses each episode's
  threshold per class on the support set's scores after adaptation; a number fixes it; ``none`` drops F1 /
  precision / recall. The rule is an evaluation setting: summary.json records it and a resume needs the same.
* **Refusals** (unfinished run, a cache that does not fit, a leaking lineage unless ``--allow-leak``):
  :mod:`cxr_tools.engine.evaluate.runs`.

Writes ``OUT/episodes.json``, ``episodes.csv``, ``scores.csv``, ``plots/*.png`` and, last, ``summary.json`` (its
presence marks a complete evaluation, which :data:`EVALUATION_SPEC` lets only ``overwrite`` replace). Each
finished episode is journalled so a rerun continues an interrupted evaluation
(:mod:`cxr_tools.engine.evaluate.journal`).
``OUT`` defaults to ``RUN/eval`` (``RUN/eval-<method>`` for another method).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cxr_tools.config import fields_from
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.sampling.episodes import EPISODE_LIST_VERSION, EpisodeOptions, save_episode_list
from cxr_tools.engine.evaluate.episodes import pair_metrics, run_episodes
from cxr_tools.engine.evaluate.journal import JOURNAL, EpisodeJournal, check_resumable
from cxr_tools.engine.evaluate.runs import (
    architecture_for,
    check_data_fits,
    check_no_leak,
    check_options,
    default_output,
    known_seen,
    match_arguments,
    matched_run,
    meta_test_episodes,
    meta_test_pool,
    model_to_evaluate,
    resolve_split,
    run_name,
    seen_knowledge,
)
from cxr_tools.engine.evaluate.summary import json_safe, provenance, write_results
from cxr_tools.errors import ConfigError
from cxr_tools.eval.report import metrics_of
from cxr_tools.eval.thresholds import describe_rule, parse_rule
from cxr_tools.methods.adapters import (
    ENCODER_METHODS,
    RUNLESS_METHODS,
    AdaptConfig,
    build_adapter,
    describe,
    resolve_method,
)
from cxr_tools.methods.embedding_cache import episode_features, run_weights, store_for
from cxr_tools.models.lineage import pretraining_notes
from cxr_tools.runtime.devices import describe_device, explain_out_of_memory, resolve_device, set_threads
from cxr_tools.runtime.estimate import Estimate, EstimatingProgress, RunPlan
from cxr_tools.runtime.fs import atomic_write_json
from cxr_tools.runtime.outputs import OutputSpec, claim, decide, previous_release
from cxr_tools.runtime.progress import NullProgress, Progress, null_progress

if TYPE_CHECKING:
    from cxr_tools.runtime.estimate import RunPlan

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
QUICK_TRY = "cxr evaluate --episodes 100 (wider intervals)"
EPISODES_JSON = "episodes.json"
SUMMARY_FORMAT = "cxr-eval"
SUMMARY_VERSION = 1
#: An evaluation: complete once summary.json is written; an interrupted one is resumed with ``--resume``
#: (``--overwrite`` wins), else started again.
EVALUATION_SPEC = OutputSpec(
    command="evaluate",
    what="evaluation",
    writes=(JOURNAL, "plots/"),
    complete=lambda p: (p / SUMMARY).is_file(),
    resumable=True,
    restart=True,
    recognise=previous_release("evaluation"),
)


@dataclass(frozen=True)
class EvaluateConfig(EpisodeOptions):
    """Options of ``cxr evaluate`` (CLI defaults).

    Attributes:
        data: the cache to evaluate on.
        run: a finished run directory (or its ``model/`` folder); None for ``method=scratch`` / ``pixels``, and for
            ``linear-probe`` / ``prototype`` / ``finetune`` of a foundation encoder named by ``backbone``.
        output: evaluation directory (default ``RUN/eval`` or ``RUN/eval-<method>``; required without a run).
        method: ``auto`` (from the run's training kind), ``maml``, ``prototype``, ``finetune``, ``scratch``,
            ``pixels`` or ``linear-probe``.
        finetune: ``head`` or ``all`` (fine-tune method).
        episodes, seed: the fixed episode list (with ways, shots, queries, images_per_patient and meta_split:
            :class:`~cxr_tools.data.sampling.episodes.EpisodeOptions`).
        seen_ways: generalized episodes (MetaChest): this many meta-train classes join the ``ways`` meta-test
            ones in every episode (0: standard episodes, every class new; docs/science.md).
        threshold: the threshold rule of F1 / precision / recall and the confusion matrices: ``support`` (chosen
            per episode and class on the support set), a probability, or ``none`` (AUC and AP only).
        pool_seed: seed of the meta-split pools (None = the run's, else 0: what training used).
        backbone: architecture of ``scratch`` without a run (default conv4), or the foundation encoder
            (``hf:PATH_OR_REPO_ID`` or a preset) that ``linear-probe`` / ``prototype`` / ``finetune`` score.
        steps, lr: fine-tuning budget (default per mode); inner_lr, adapt_steps: MAML / scratch budget
            (default the MAML run's, else 0.01 and 5 for MAML; scratch has no default without a run);
            temperature: prototype softmax temperature.
        match: a run (or its evaluation) whose real budget, meta-split and pool seed ``scratch`` copies.
        pairs: Siamese pair-set size (0 = none).
        bootstrap: deprecated and ignored (intervals come from :mod:`cxr_tools.eval.variance`).
        plots: write the PNG plots.
        embed_once: frozen-feature methods (linear-probe, prototype, finetune head) embed each pool image once and
            index its rows per episode (:mod:`cxr_tools.methods.embedding_cache`; same scores within float
            rounding); False embeds every episode's images again.
        features_dir: also keep those features in this folder (one file per weights, function and cache
            content), reused by later evaluations of the same run on the same cache.
        device, threads: where to compute.
        overwrite: replace a complete evaluation in ``output``.
        resume: continue an interrupted evaluation in ``output`` after its finished episodes (same settings).
        allow_leak: evaluate a run whose lineage touches the meta-test classes or patients (exploration only;
            the result's ``leak`` says how).
    """

    data: Path
    run: Path | None = None
    output: Path | None = None
    method: str = "auto"
    finetune: str = "head"
    episodes: int = 600
    seed: int = 0
    seen_ways: int = 0
    threshold: str | float = "support"
    pool_seed: int | None = None
    backbone: str | None = None
    steps: int | None = None
    lr: float | None = None
    inner_lr: float | None = None
    adapt_steps: int | None = None
    temperature: float = 0.1
    match: Path | None = None
    pairs: int = 1000
    bootstrap: int = 1000
    plots: bool = True
    embed_once: bool = True
    features_dir: Path | None = None
    device: str = "auto"
    threads: int | None = None
    overwrite: bool = False
    resume: bool = True
    allow_leak: bool = False


@dataclass(frozen=True)
class EvaluateResult:
    """What an evaluation measured. ``per_class[c][metric]`` / ``overall[metric]`` are ``{mean, ci95, n}``;
    ``leak`` is None, or one line saying how the run's lineage touches the meta-test split (``--allow-leak``)."""

    output: Path
    name: str
    method: str
    method_label: str
    run: Path | None
    kind: str | None
    cache: Path
    episodes: int
    episode_list_hash: str
    ways: int
    shots: int
    queries: int
    seed: int
    threshold: str
    classes: tuple[str, ...]
    per_class: dict[str, dict[str, dict[str, Any]]]
    overall: dict[str, dict[str, Any]]
    pairs: dict[str, Any] | None
    seconds: float
    files: tuple[Path, ...] = field(default_factory=tuple)
    leak: str | None = None
    lineage_notes: tuple[str, ...] = ()  # external weights that saw the evaluated images, not its classes
    seen_ways: int = 0
    seen_classes: tuple[str, ...] = ()
    generalized: dict[str, Any] | None = None  # seen / unseen / harmonic per metric (generalized episodes)


def evaluate(config: EvaluateConfig, progress: Progress | None = None) -> EvaluateResult:
    """Evaluate one method on the fixed meta-test episodes; see the module docstring."""
    return cast("EvaluateResult", _evaluate(config, progress, dry_run=False))


def plan_evaluate(config: EvaluateConfig) -> RunPlan:
    """``cxr evaluate --dry-run``: the plan and its estimate from the first episodes, timed with a throwaway
    journal in a temporary folder; the output folder is not touched."""
    return cast("RunPlan", _evaluate(config, None, dry_run=True))


def _evaluate(config: EvaluateConfig, progress: Progress | None, dry_run: bool) -> EvaluateResult | RunPlan:
    progress = null_progress(progress)
    began = time.perf_counter()
    rule = parse_rule(config.threshold)
    check_options(config.episodes, config.pairs, config.bootstrap)
    adapt_cfg = fields_from(AdaptConfig, config)
    spec = replace(config.episode_spec, seen_ways=config.seen_ways)
    cache = open_cache(config.data)
    model, meta = model_to_evaluate(config.run, config.backbone, config.method)
    kind = str(meta.get("training")) if meta is not None else None
    method = resolve_method(config.method, kind)
    if method not in RUNLESS_METHODS and meta is None:
        raise ConfigError(
            f"--method {method} needs a run to evaluate.",
            "Pass RUN, use --method scratch|pixels, or score a foundation encoder: --method "
            f"{'|'.join(ENCODER_METHODS)} --backbone hf:DIR (or a preset, `cxr models`).",
        )
    label = f"finetune-{config.finetune}" if method == "finetune" else method
    if meta is not None:
        check_data_fits(meta, cache)
    matched = matched_run(config.match, method)
    backbone, normalisation = architecture_for(method, config.backbone, meta, matched, cache)

    split = resolve_split(config.meta_split, meta, cache, matched)
    pool_seed, pool = meta_test_pool(cache, split, config.pool_seed, meta, matched)
    leak = check_no_leak(meta if method != "scratch" else None, cache, split, pool, config.allow_leak)
    notes = [] if meta is None or method == "scratch" else pretraining_notes(meta, cache.manifest.get("source"))
    episodes, ep_hash = meta_test_episodes(cache, split, pool, spec, config.episodes, config.seed)

    set_threads(config.threads)
    device = resolve_device(config.device)
    seen = [c for c in split.train if any(c in ep.seen for ep in episodes)]
    adapter = build_adapter(
        model, meta, spec.total_ways, adapt_cfg, backbone=backbone, device=device, **match_arguments(matched)
    )
    if seen and model is not None:
        known_seen(adapter, model, meta, cache, split, pool_seed, seen)
    settings = describe(adapter)
    if seen:
        settings["seen_classes"] = seen_knowledge(adapter)
    out = Path(config.output) if config.output else default_output(config.run, label, kind)
    if dry_run:

        def timing(timed: Progress, journal: EpisodeJournal) -> object:
            return run_episodes(adapter, cache, episodes, normalisation, device, config.seed, rule, timed, journal)

        return _dry_run(config, out, (label, backbone, len(pool)), describe_device(device), timing)
    out = claim(decide(out, EVALUATION_SPEC, overwrite=config.overwrite, resume=config.resume))
    if config.resume:
        check_resumable(out)
    save_episode_list(
        out / EPISODES_JSON,
        episodes,
        {
            "meta_split": split.to_dict(),
            "pool_seed": pool_seed,
            "ways": config.ways,
            "shots": config.shots,
            "queries": config.queries,
            "seed": config.seed,
            **({"seen_ways": config.seen_ways} if config.seen_ways else {}),
        },
        fingerprint=cache.fingerprint,
    )
    journal = EpisodeJournal(
        out,
        {
            "run": str(Path(config.run).resolve()) if config.run is not None else None,
            "weights": (meta or {}).get("weights_sha256"),
            "method": method,
            "settings": {**settings, "finetune": config.finetune},
            "backbone": backbone,
            "cache_fingerprint": cache.fingerprint,
            "episode_list_hash": ep_hash,
            "episode_list_version": EPISODE_LIST_VERSION,
            "threshold": rule.label,
        },
        resume=config.resume,
    )
    try:
        with explain_out_of_memory(
            f"Out of memory adapting to episodes of {spec.images} images at {min(cache.image_shape)} px on {device}.",
            "Lower --queries or --shots, or evaluate on a cache at a smaller --size; finished episodes are kept and "
            "a rerun resumes.",
        ):
            features = None  # a frozen-feature method embeds each pool image once (episode_features: None else)
            if config.embed_once and meta is not None:
                store = store_for(config.features_dir)
                features = episode_features(adapter, cache, run_weights(meta), normalisation, device, store)
            timed = EstimatingProgress(
                progress, "evaluate", describe_device(device), Estimate.log, hint=QUICK_TRY, skip=len(journal.done)
            )
            records, scores = run_episodes(
                adapter, cache, episodes, normalisation, device, config.seed, rule, timed, journal, features
            )
    finally:
        journal.close()
    pairs = None
    if kind == "siamese" and config.pairs > 0 and model is not None and meta is not None:
        pairs = pair_metrics(
            model, meta, cache, split, pool, normalisation, device, config.pairs, config.seed, progress
        )

    per_class, overall, variance, files, generalized = write_results(
        out, records, scores, cache, list(split.test), episodes, rule, label if config.plots else None, seen
    )
    seconds = time.perf_counter() - began
    run_path = Path(config.run) if config.run is not None else None
    name = f"{run_name(run_path)}:{label}" if run_path is not None else f"{label}:{backbone}" if backbone else label
    summary = {
        "format": SUMMARY_FORMAT,
        "version": SUMMARY_VERSION,
        "name": name,
        "method": method,
        "method_label": label,
        "settings": {**settings, **({"finetune": config.finetune} if method == "finetune" else {})},
        "run": str(run_path) if run_path is not None else None,
        "kind": kind,
        "architecture": backbone,
        "cache": str(config.data),
        "cache_manifest_hash": cache.manifest_hash,
        "cache_fingerprint": cache.fingerprint,
        "cache_content": dict(cache.content),
        "cache_preprocessing": dict(cache.manifest.get("preprocessing") or {}),
        "model_cache_manifest_hash": (meta or {}).get("cache_manifest_hash"),
        "meta_split": split.to_dict(),
        "pool_seed": pool_seed,
        "pool_images": len(pool),
        "episode_list_hash": ep_hash,
        "episode_list_version": EPISODE_LIST_VERSION,
        "images_per_patient": config.images_per_patient,
        "episodes": len(episodes),
        "ways": config.ways,
        "shots": config.shots,
        "queries": config.queries,
        "seed": config.seed,
        "threshold": rule.label,
        "threshold_rule": describe_rule(rule),
        "classes": list(split.test),
        "seen_ways": config.seen_ways,
        "seen_classes": seen,
        "generalized": generalized,
        "metrics": list(metrics_of(rule)),
        "per_class": per_class,
        "overall": overall,
        "variance": variance,
        "pairs": pairs,
        "encoder": (meta or {}).get("extra", {}).get("encoder") if kind == "encoder" else None,
        "leak": leak,
        "lineage_notes": notes,
        **provenance(seconds, describe_device(device)),
    }
    files.append(atomic_write_json(out / SUMMARY, json_safe(summary)))
    journal.remove()
    kept = {
        k: summary[k]
        for k in (
            "name",
            "method",
            "method_label",
            "kind",
            "episodes",
            "ways",
            "shots",
            "queries",
            "seed",
            "threshold",
            "pairs",
            "leak",
            "seen_ways",
        )
    }
    return EvaluateResult(
        output=out,
        run=run_path,
        cache=Path(config.data),
        episode_list_hash=ep_hash,
        classes=tuple(split.test),
        per_class=json_safe(per_class),
        overall=json_safe(overall),
        seconds=seconds,
        files=tuple([out / EPISODES_JSON, *files]),
        lineage_notes=tuple(notes),
        seen_classes=tuple(seen),
        generalized=json_safe(generalized),
        **kept,
    )


def _dry_run(
    config: EvaluateConfig,
    out: Path,
    what: tuple[str, str | None, int],
    device: str,
    timing: Callable[[Progress, EpisodeJournal], object],
) -> RunPlan:
    """The plan of ``cxr evaluate --dry-run`` (``what``: method label, backbone, meta-test pool size), its
    estimate timed on the first episodes (``timing`` runs them) with a journal in a temporary folder, stopped as
    soon as the estimate is known."""

    found: list[Estimate] = []

    def stop(estimate: Estimate) -> None:
        found.append(estimate)
        raise _Measured

    label, backbone, pool = what
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cxr-dry-run-") as folder:
        journal = EpisodeJournal(Path(folder), {"dry_run": True}, resume=False)
        try:
            timing(EstimatingProgress(NullProgress(), "evaluate", device, stop, hint=QUICK_TRY), journal)
        except _Measured:
            pass
        finally:
            journal.close()
    if not found:  # every episode ran before an estimate was due: the whole evaluation was measured
        found.append(Estimate(time.monotonic() - began, config.episodes, "episodes", device, QUICK_TRY))
    plan = [
        ("data", f"{config.data}: {pool} meta-test pool images"),
        ("model", f"{config.run or '-'}: method {label}" + (f", {backbone}" if backbone else "")),
        ("episodes", f"{config.episodes} of {config.ways}-way {config.shots}-shot, {config.queries} queries"),
    ]
    return RunPlan("evaluate", out, device, tuple(plan), found[0] if found else None)


class _Measured(Exception):
    """Ends the episodes of a dry run once their estimate is known."""
