"""Engine of ``cxr evaluate RUN --data CACHE``: few-shot evaluation on the meta-test classes (docs/science.md).

* **Same episodes for every method.** The meta-split (``--meta-split``; ``auto`` = the MAML run's split, else
  the cache's ``meta_split.json``, else MetaChest) and its disjoint pools (pool seed: the run's, else 0) give the
  meta-test classes and pool; episode ``i`` is drawn from ``(seed, i)`` alone. The list depends on the cache,
  split, pool seed, ways/shots/queries and seed — never on the method or the run — and is saved with its hash as
  ``episodes.json``; ``cxr compare`` refuses evaluations whose hashes differ.
* **Per episode** the method adapts and scores (:mod:`cxr_tools.engine.evaluate.episodes`); aggregates per class
  and overall (:mod:`cxr_tools.engine.evaluate.summary`; the unit ``cxr compare`` pairs on); Siamese runs also
  get pair metrics.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    load_run,
    match_arguments,
    matched_run,
    meta_test_episodes,
    meta_test_pool,
    resolve_split,
    run_name,
)
from cxr_tools.engine.evaluate.summary import json_safe, provenance, write_results
from cxr_tools.errors import ConfigError
from cxr_tools.eval.report import metrics_of
from cxr_tools.eval.thresholds import describe_rule, parse_rule
from cxr_tools.methods.adapters import RUNLESS_METHODS, AdaptConfig, build_adapter, describe, resolve_method
from cxr_tools.models.lineage import pretraining_notes
from cxr_tools.runtime.devices import describe_device, explain_out_of_memory, resolve_device, set_threads
from cxr_tools.runtime.fs import atomic_write_json
from cxr_tools.runtime.outputs import OutputSpec, claim, decide, previous_release
from cxr_tools.runtime.progress import Progress, null_progress

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
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
        run: a finished run directory (or its ``model/`` folder); None only for ``method=scratch`` / ``pixels``.
        output: evaluation directory (default ``RUN/eval`` or ``RUN/eval-<method>``; required without a run).
        method: ``auto`` (from the run's training kind), ``maml``, ``prototype``, ``finetune``, ``scratch``,
            ``pixels`` or ``linear-probe``.
        finetune: ``head`` or ``all`` (fine-tune method).
        episodes, seed: the fixed episode list (with ways, shots, queries, images_per_patient and meta_split:
            :class:`~cxr_tools.data.sampling.episodes.EpisodeOptions`).
        threshold: the threshold rule of F1 / precision / recall and the confusion matrices: ``support`` (chosen
            per episode and class on the support set), a probability, or ``none`` (AUC and AP only).
        pool_seed: seed of the meta-split pools (None = the run's, else 0: what training used).
        backbone: architecture of ``scratch`` without a run (default conv4).
        steps, lr: fine-tuning budget (default per mode); inner_lr, adapt_steps: MAML / scratch budget
            (default the MAML run's, else 0.01 and 5 for MAML; scratch has no default without a run);
            temperature: prototype softmax temperature.
        match: a run (or its evaluation) whose real budget, meta-split and pool seed ``scratch`` copies.
        pairs: Siamese pair-set size (0 = none).
        bootstrap: deprecated and ignored (intervals come from :mod:`cxr_tools.eval.variance`).
        plots: write the PNG plots.
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


def evaluate(config: EvaluateConfig, progress: Progress | None = None) -> EvaluateResult:
    """Evaluate one method on the fixed meta-test episodes; see the module docstring."""

    progress = null_progress(progress)
    began = time.perf_counter()
    rule = parse_rule(config.threshold)
    check_options(config.episodes, config.pairs, config.bootstrap)
    adapt_cfg = fields_from(AdaptConfig, config)
    spec = config.episode_spec
    cache = open_cache(config.data)
    model, meta = (None, None) if config.run is None else load_run(Path(config.run))
    kind = str(meta.get("training")) if meta is not None else None
    method = resolve_method(config.method, kind)
    if method not in RUNLESS_METHODS and meta is None:
        raise ConfigError(f"--method {method} needs a run to evaluate.", "Pass RUN, or use --method scratch|pixels.")
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
    adapter = build_adapter(
        model, meta, config.ways, adapt_cfg, backbone=backbone, device=device, **match_arguments(matched)
    )
    settings = describe(adapter)
    out = Path(config.output) if config.output else default_output(config.run, label, kind)
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
            records, scores = run_episodes(
                adapter, cache, episodes, normalisation, device, config.seed, rule, progress, journal
            )
    finally:
        journal.close()
    pairs = None
    if kind == "siamese" and config.pairs > 0 and model is not None and meta is not None:
        pairs = pair_metrics(
            model, meta, cache, split, pool, normalisation, device, config.pairs, config.seed, progress
        )

    per_class, overall, variance, files = write_results(
        out, records, scores, cache, list(split.test), episodes, rule, title=label if config.plots else None
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
        "metrics": list(metrics_of(rule)),
        "per_class": per_class,
        "overall": overall,
        "variance": variance,
        "pairs": pairs,
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
        **kept,
    )
