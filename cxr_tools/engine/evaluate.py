"""Engine of ``cxr evaluate RUN --data CACHE``: few-shot evaluation on the meta-test classes (SCIENCE.md §2).

What an evaluation does, and why:

* **Same episodes for every method.** The meta-split (``--meta-split``; ``auto`` = the MAML run's split, else
  the cache's ``meta_split.json``, else MetaChest) and its disjoint image pools (pool seed: the one the run
  recorded, else 0)
  give the meta-test classes and pool; :meth:`~cxr_tools.data.episodes.EpisodeSampler.fixed_list` draws
  ``--episodes`` episodes from ``(seed, i)`` alone. The list depends on the cache, split, pool seed,
  ways/shots/queries and seed — never on the method or the run — and is saved with its hash as
  ``eval/episodes.json``; ``cxr compare`` refuses evaluations whose hashes differ. Only meta-test classes and
  meta-test pool images are read.
* **Per episode**, the method (:mod:`cxr_tools.methods.adapters`) adapts to the support set (its randomness,
  e.g. a fresh head, from the generator ``(seed, i)``) and scores the queries in eval mode, batch-independently.
  Per episode class: AUC and AP (threshold-free), F1 / precision / recall at ``--threshold``
  (:func:`~cxr_tools.eval.metrics.episode_metrics`).
* **Aggregates**: per class, mean ± 95% CI over the episodes containing it; overall, mean ± 95% CI over
  episodes of the episode's mean over its classes (the unit ``cxr compare`` pairs on).
* **Siamese runs** also get the pair AUC and the similarity accuracy (at the run's validation threshold) on a
  fixed balanced pair set from the meta-test pool (:class:`~cxr_tools.data.pairs.PairSampler`).
* **Refusals**: a run without a model folder (never finished), a cache whose image size, preprocessing or label
  space does not fit the model, too few positives, and a leak: a run whose lineage (it, or any run it was
  initialised from, :mod:`cxr_tools.models.lineage`) trained on a meta-test class or on a patient of the
  meta-test pool, or has no lineage record. ``--allow-leak`` evaluates it anyway and says so in ``leak``.

Writes ``OUT/episodes.json``, ``episodes.csv`` (episode, class, counts, metrics), ``scores.csv`` (every query
score), ``plots/*.png`` and, last, ``summary.json`` (its presence marks a complete evaluation; an existing one is
replaced only with ``overwrite``). Until then each finished episode is journalled, and a rerun of an interrupted
evaluation continues after the last one (:mod:`cxr_tools.engine.evaluate_journal`). ``OUT`` defaults to
``RUN/eval`` for the run's own method and ``RUN/eval-<method>`` for another.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools import __version__
from cxr_tools.engine.evaluate_journal import EpisodeJournal, check_resumable
from cxr_tools.errors import ConfigError, DataError, ModelError, OutputExistsError
from cxr_tools.eval.metrics import METRICS
from cxr_tools.runtime.progress import Progress, null_progress

if TYPE_CHECKING:
    from cxr_tools.data.cache import CacheReader
    from cxr_tools.data.episodes import Episode
    from cxr_tools.data.splits import MetaSplit

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
EPISODES_JSON = "episodes.json"
EPISODES_CSV = "episodes.csv"
SCORES_CSV = "scores.csv"
PLOTS_DIR = "plots"
SUMMARY_FORMAT = "cxr-eval"
SUMMARY_VERSION = 1
_PAIR_KEY = 104729  # seed key of the Siamese pair set, apart from the episodes' (seed, i)
_BOOTSTRAP_KEY = 130363  # seed key of the patient-cluster bootstrap


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``cxr evaluate`` (CLI defaults).

    Attributes:
        data: the cache to evaluate on.
        run: a finished run directory (or its ``model/`` folder); None only for ``method=scratch`` / ``pixels``.
        output: evaluation directory (default ``RUN/eval`` or ``RUN/eval-<method>``; required without a run).
        method: ``auto`` (from the run's training kind), ``maml``, ``prototype``, ``finetune``, ``scratch``,
            ``pixels`` or ``linear-probe``.
        finetune: ``head`` or ``all`` (fine-tune method).
        episodes, ways, shots, queries, seed: the fixed episode list.
        images_per_patient: the most images one patient contributes to an episode (recorded in the list).
        threshold: probability threshold of F1 / precision / recall and the confusion matrices.
        meta_split: ``auto``, ``metachest``, a YAML/JSON file or ``"train=A;val=B;test=C,D"``.
        pool_seed: seed of the meta-split pools (None = the run's, else 0: what training used).
        backbone: architecture of ``scratch`` without a run (default conv4).
        steps, lr: fine-tuning budget (default per mode); inner_lr, adapt_steps: MAML / scratch budget
            (default the MAML run's, else 0.01 and 5 for MAML; scratch has no default without a run);
            temperature: prototype softmax temperature.
        match: a run whose adaptation budget (steps, lr, optimiser) ``scratch`` copies.
        pairs: Siamese pair-set size (0 = none).
        bootstrap: patient-cluster bootstrap replicates (0 = episode interval only).
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
    ways: int = 2
    shots: int = 5
    queries: int = 15
    images_per_patient: int = 1
    seed: int = 0
    threshold: float = 0.5
    meta_split: str = "auto"
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
    threshold: float
    classes: tuple[str, ...]
    per_class: dict[str, dict[str, dict[str, Any]]]
    overall: dict[str, dict[str, Any]]
    pairs: dict[str, Any] | None
    seconds: float
    files: tuple[Path, ...] = field(default_factory=tuple)
    leak: str | None = None


# --- inputs -----------------------------------------------------------------------------------------------------


def load_run(run: Path) -> tuple[Any, dict[str, Any]]:
    """``(model, meta)`` of a finished run; a clear :class:`ModelError` for a run that never finished."""
    from cxr_tools.models import load_model_dir

    run = Path(run)
    if not run.exists():
        raise ModelError(f"Run {run} does not exist.", "Pass the directory a training command wrote (-o RUN).")
    if not (run / "model.json").is_file() and not (run / "model" / "model.json").is_file():
        raise ModelError(
            f"{run} has no model folder (model/model.json): the run never finished training, or is not a run.",
            "Rerun its training command to resume it, or pass a finished run directory.",
        )
    return load_model_dir(run)


def check_data_fits(meta: Mapping[str, Any], cache: CacheReader) -> None:
    """Refuse a cache whose image size, preprocessing or label space differs from what the model was trained on."""
    from cxr_tools.models import check_compatible

    check_compatible(meta, image_size=int(cache.image_shape[0]), channels=1)
    mine = dict((meta.get("input") or {}).get("preprocessing") or {})
    theirs = dict(cache.manifest.get("preprocessing") or {})
    if mine and theirs:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            detail = "; ".join(f"{k}: model {mine.get(k)!r} vs cache {theirs.get(k)!r}" for k in differ[:5])
            raise ModelError(
                f"Cache {cache.path} was preprocessed differently from the model's training data ({detail}).",
                "Preprocess the data with the model's settings (see its model.json 'input.preprocessing').",
            )
    missing = [c for c in meta.get("labels") or [] if c not in cache.labels]
    if missing:
        raise ModelError(
            f"Label space mismatch: the model's class(es) {', '.join(missing)} are not in cache {cache.path}.",
            f"The cache's labels: {', '.join(cache.labels)}; evaluate on a cache with the model's label space.",
        )


def resolve_split(spec: str, meta: Mapping[str, Any] | None, cache: CacheReader) -> MetaSplit:
    """``auto``: the MAML run's meta-split, else the cache's saved one, else MetaChest; else parse ``spec``."""
    from cxr_tools.data.splits import parse_meta_split, resolve_meta_split

    run_split = ((meta or {}).get("extra") or {}).get("meta_split")
    if (spec or "auto").strip().lower() == "auto" and isinstance(run_split, Mapping):
        return parse_meta_split(dict(run_split), cache.labels)
    return resolve_meta_split(spec, cache.path, cache.labels)


def default_output(run: Path | None, method_label: str, kind: str | None) -> Path:
    """``RUN/eval`` for the run's own method, ``RUN/eval-<method>`` for another (a run dir, not ``RUN/model``)."""
    from cxr_tools.methods.adapters import AUTO_METHOD

    if run is None:
        raise ConfigError(f"Evaluating without a run (--method {method_label}) needs an output: -o OUT.")
    base = Path(run).parent if (Path(run) / "model.json").is_file() else Path(run)
    own = {"finetune": "finetune-head"}.get(AUTO_METHOD.get(kind or "", ""), AUTO_METHOD.get(kind or "", ""))
    return base / ("eval" if method_label == own else f"eval-{method_label}")


def prepare_eval_dir(path: Path, overwrite: bool, resume: bool = False) -> Path:
    """Write-once: a complete evaluation (``summary.json``) needs ``overwrite``; an interrupted one is kept for
    ``resume`` (its journal decides what can be reused) and restarted otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory.", "Choose another -o.")
    if path.is_dir() and any(path.iterdir()):
        complete = (path / SUMMARY).is_file()
        ours = complete or (path / EPISODES_JSON).is_file()
        if complete and not overwrite:
            raise OutputExistsError(
                f"{path} already holds an evaluation ({SUMMARY}).",
                "Pass --overwrite to replace it, or write to another directory with -o.",
            )
        if not ours and not overwrite:
            raise OutputExistsError(
                f"{path} is not empty and holds no evaluation.", "Choose another -o, or pass --overwrite to replace it."
            )
        if not complete and resume and not overwrite:
            return path
        if not complete:
            log.info("Restarting the interrupted evaluation in %s.", path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the engine ------------------------------------------------------------------------------------------------


def evaluate(config: EvaluateConfig, progress: Progress | None = None) -> EvaluateResult:
    """Evaluate one method on the fixed meta-test episodes; see the module docstring."""
    import torch

    from cxr_tools.data.cache import open_cache
    from cxr_tools.data.episodes import (
        EPISODE_LIST_VERSION,
        EpisodeSampler,
        EpisodeSpec,
        episode_list_hash,
        index_patients,
        save_episode_list,
    )
    from cxr_tools.data.splits import meta_split_pools
    from cxr_tools.methods.adapters import RUNLESS_METHODS, AdaptConfig, build_adapter, describe, resolve_method
    from cxr_tools.runtime.devices import describe_device, resolve_device, set_threads

    progress = null_progress(progress)
    began = time.perf_counter()
    _check_config(config)
    adapt_cfg = AdaptConfig(
        method=config.method,
        finetune=config.finetune,
        steps=config.steps,
        lr=config.lr,
        inner_lr=config.inner_lr,
        adapt_steps=config.adapt_steps,
        temperature=config.temperature,
    )
    spec = EpisodeSpec(config.ways, config.shots, config.queries, config.images_per_patient)
    cache = open_cache(config.data)
    model, meta = (None, None) if config.run is None else load_run(Path(config.run))
    kind = str(meta.get("training")) if meta is not None else None
    method = resolve_method(config.method, kind)
    if method not in RUNLESS_METHODS and meta is None:
        raise ConfigError(f"--method {method} needs a run to evaluate.", "Pass RUN, or use --method scratch|pixels.")
    label = f"finetune-{config.finetune}" if method == "finetune" else method
    if meta is not None:
        check_data_fits(meta, cache)
        if config.backbone and method == "scratch" and config.backbone != meta.get("architecture"):
            raise ConfigError(
                f"--backbone {config.backbone} differs from the run's architecture {meta.get('architecture')}.",
                "Drop --backbone (scratch follows the run) or drop RUN.",
            )
    matched = _matched_run(config.match, method)
    arch_source = meta if meta is not None else matched[1] if matched is not None else {}
    backbone: str | None = config.backbone or str(arch_source.get("architecture") or "conv4")
    if method == "pixels":  # no network: the pixels in [0, 1]
        backbone, normalisation = None, "unit"
    else:
        normalisation = _normalisation(meta, str(backbone), cache)

    split = resolve_split(config.meta_split, meta, cache)
    pool_seed = config.pool_seed
    if pool_seed is None:
        from cxr_tools.models.lineage import recorded_pool_seed

        pool_seed = recorded_pool_seed(meta or {}) or 0
    pool = meta_split_pools(cache.index, cache.labels, split, seed=pool_seed)["test"]
    leak = _check_no_leak(meta if method != "scratch" else None, cache, split, pool, config.allow_leak)
    raw = cache.raw_labels()
    try:
        sampler = EpisodeSampler(raw, cache.labels, split.test, pool, spec, patients=index_patients(cache.index))
    except DataError as exc:
        raise DataError(f"Meta-test classes/pool: {exc.message}", exc.hint) from None
    episodes = sampler.fixed_list(config.episodes, config.seed)
    _check_rows(episodes, pool, split.test)
    ep_hash = episode_list_hash(episodes, cache.manifest_hash)

    set_threads(config.threads)
    device = resolve_device(config.device)
    adapter = build_adapter(model, meta, config.ways, adapt_cfg, backbone=backbone, device=device, match=matched)
    out = prepare_eval_dir(Path(config.output) if config.output else default_output(config.run, label, kind),
                           config.overwrite, config.resume)  # fmt: skip
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
        fingerprint=cache.manifest_hash,
    )
    journal = EpisodeJournal(
        out,
        {
            "run": str(Path(config.run).resolve()) if config.run is not None else None,
            "weights": (meta or {}).get("weights_sha256"),
            "method": method,
            "settings": {**describe(adapter), "finetune": config.finetune},
            "backbone": backbone,
            "cache_manifest_hash": cache.manifest_hash,
            "episode_list_hash": ep_hash,
            "episode_list_version": EPISODE_LIST_VERSION,
            "threshold": config.threshold,
        },
        resume=config.resume,
    )
    from cxr_tools.runtime.devices import explain_out_of_memory

    try:
        with explain_out_of_memory(
            f"Out of memory adapting to episodes of {spec.images} images at {min(cache.image_shape)} px on {device}.",
            "Lower --queries or --shots, or evaluate on a cache at a smaller --size; finished episodes are kept and "
            "a rerun resumes.",
        ):
            records, scores = _run_episodes(adapter, cache, episodes, normalisation, device, config, progress, journal)
    finally:
        journal.close()
    pairs = None
    if kind == "siamese" and config.pairs > 0 and model is not None and meta is not None:
        pairs = _pair_metrics(model, meta, cache, split, pool, normalisation, device, config, progress)

    import pandas as pd

    from cxr_tools.eval.report import aggregate, write_table

    table = pd.DataFrame.from_records(records)
    score_table = pd.DataFrame.from_records(scores)
    score_table["patient"] = cache.index["patient_id"].astype(str).to_numpy()[score_table["row"].to_numpy(int)]
    boot = _bootstrap(score_table, list(split.test), config)
    per_class, overall = aggregate(table, list(split.test), bootstrap=boot)
    files = [write_table(out / EPISODES_CSV, table), write_table(out / SCORES_CSV, score_table)]
    if config.plots:
        from cxr_tools.eval.report import evaluation_plots

        files += evaluation_plots(out / PLOTS_DIR, score_table, per_class, overall, config.threshold, title=label)
    seconds = time.perf_counter() - began
    run_path = Path(config.run) if config.run is not None else None
    name = f"{_run_name(run_path)}:{label}" if run_path is not None else f"{label}:{backbone}" if backbone else label
    summary = {
        "format": SUMMARY_FORMAT,
        "version": SUMMARY_VERSION,
        "name": name,
        "method": method,
        "method_label": label,
        "settings": {**describe(adapter), **({"finetune": config.finetune} if method == "finetune" else {})},
        "run": str(run_path) if run_path is not None else None,
        "kind": kind,
        "architecture": backbone,
        "cache": str(config.data),
        "cache_manifest_hash": cache.manifest_hash,
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
        "threshold": config.threshold,
        "classes": list(split.test),
        "metrics": list(METRICS),
        "per_class": per_class,
        "overall": overall,
        "bootstrap": _bootstrap_record(boot),
        "pairs": pairs,
        "leak": leak,
        "seconds": round(seconds, 3),
        "device": describe_device(device),
        "tool_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from cxr_tools.runtime.fs import atomic_write_json

    files.append(atomic_write_json(out / SUMMARY, _json_safe(summary)))
    journal.remove()
    return EvaluateResult(
        output=out,
        name=name,
        method=method,
        method_label=label,
        run=run_path,
        kind=kind,
        cache=Path(config.data),
        episodes=len(episodes),
        episode_list_hash=ep_hash,
        ways=config.ways,
        shots=config.shots,
        queries=config.queries,
        seed=config.seed,
        threshold=config.threshold,
        classes=tuple(split.test),
        per_class=_json_safe(per_class),
        overall=_json_safe(overall),
        pairs=pairs,
        seconds=seconds,
        files=tuple([out / EPISODES_JSON, *files]),
        leak=leak,
    )


def _check_config(config: EvaluateConfig) -> None:
    if config.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1 (got {config.episodes}).")
    if not (0.0 <= config.threshold <= 1.0):
        raise ConfigError(f"--threshold must be a probability in [0, 1] (got {config.threshold}).")
    if config.pairs < 0:
        raise ConfigError(f"--pairs must be >= 0 (got {config.pairs}).")
    if config.bootstrap < 0:
        raise ConfigError(f"bootstrap must be >= 0 replicates (got {config.bootstrap}).", "Use 1000 or more, or 0.")


def _bootstrap(score_table: Any, classes: Sequence[str], config: EvaluateConfig) -> Any:
    """Patient-cluster bootstrap intervals (None when disabled), seeded from the evaluation seed."""
    if config.bootstrap == 0 or not len(score_table):
        return None
    from cxr_tools.eval.bootstrap import cluster_bootstrap
    from cxr_tools.runtime.seeding import numpy_generator

    rng = numpy_generator(config.seed, _BOOTSTRAP_KEY)
    return cluster_bootstrap(score_table, classes, replicates=config.bootstrap, rng=rng, threshold=config.threshold)


def _bootstrap_record(boot: Any) -> dict[str, Any] | None:
    """summary.json's ``bootstrap``: how the cluster intervals were drawn."""
    if boot is None:
        return None
    return {"unit": "patient", "replicates": boot.replicates, "patients": boot.patients, "seed_key": _BOOTSTRAP_KEY}


def _matched_run(match: Path | None, method: str) -> tuple[str, dict[str, Any]] | None:
    """``(path, model.json)`` of ``--match`` (scratch copies that run's adaptation budget)."""
    if match is None:
        return None
    if method != "scratch":
        raise ConfigError(f"--match applies to --method scratch, not {method}.", "Drop --match.")
    from cxr_tools.models.checkpoints import read_model_meta

    if not Path(match).exists():
        raise ModelError(f"--match run {match} does not exist.", "Pass the directory a training command wrote.")
    return str(match), read_model_meta(match)


def _run_name(run: Path) -> str:
    return run.parent.name if run.name == "model" else run.name


def _normalisation(meta: Mapping[str, Any] | None, backbone: str, cache: CacheReader) -> str:
    from cxr_tools.models.registry import model_card

    if meta is not None:
        return str((meta.get("input") or {}).get("normalisation") or "unit")
    card = model_card(backbone)
    if min(cache.image_shape) < card.min_image_size:
        raise ModelError(
            f"{backbone} needs images of at least {card.min_image_size} px; cache {cache.path} has "
            f"{min(cache.image_shape)} px.",
            "Use a larger --size in cxr preprocess, or another --backbone.",
        )
    return card.normalisation


def _check_no_leak(
    meta: Mapping[str, Any] | None, cache: CacheReader, split: MetaSplit, pool: np.ndarray, allow: bool
) -> str | None:
    """Refuse a run whose lineage trained on a meta-test class or patient (or cannot be checked); with ``allow``,
    return that as one line instead (None: no leak; nothing to check without trained weights)."""
    if meta is None:
        return None
    from cxr_tools.data.splits import patients_of
    from cxr_tools.models.lineage import find_leak, load_patient_sets

    sets = load_patient_sets(meta["path"]) if meta.get("path") else {}
    leak = find_leak(meta, sets, split.test, patients_of(cache.index, pool))
    if leak is None:
        return None
    if allow:
        log.warning("Evaluating a leaking model (--allow-leak): %s.", leak)
        return leak
    if "cannot be checked" in leak or "missing or altered" in leak:
        hint = "Retrain the run (and its parents) with this version of cxr-tools, or pass --allow-leak to explore."
    else:
        hint = (
            "Train every run of the chain on the meta-train pool only (--classes base, the same --pool-seed as "
            "meta-train), or pass --allow-leak to explore (the summary then records the leak)."
        )
    raise DataError(f"Leak: {leak}, so its few-shot scores on the meta-test split would be inflated.", hint)


def _check_rows(episodes: Sequence[Episode], pool: np.ndarray, classes: Sequence[str]) -> None:
    """Every image an episode reads lies in the meta-test pool, every class is a meta-test class."""
    for ep in episodes:
        rows = np.concatenate([ep.support_rows, ep.query_rows])
        if not np.isin(rows, pool).all() or not set(ep.classes) <= set(classes):
            raise DataError("An episode left the meta-test classes or pool.", "Report this as a bug.")


def _run_episodes(
    adapter: Any,
    cache: CacheReader,
    episodes: Sequence[Episode],
    normalisation: str,
    device: Any,
    config: EvaluateConfig,
    progress: Progress,
    journal: EpisodeJournal,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Adapt and score every episode (reusing the journal's finished ones): ``episodes.csv`` and ``scores.csv``
    rows in episode order."""
    from cxr_tools.eval.metrics import episode_metrics
    from cxr_tools.methods.episodes import episode_tensors
    from cxr_tools.runtime.seeding import make_generator

    records: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    aucs: list[float] = []
    with progress.task("evaluate", total=len(episodes)) as task:
        for i, ep in enumerate(episodes):
            if i in journal.done:
                done_records, done_scores = journal.done[i]
                records += done_records
                scores += done_scores
                aucs.append(float(np.nanmean([r["auc"] for r in done_records])))
                task.advance()
                continue
            sx, sy, qx, _ = episode_tensors(cache, ep, normalisation, device)
            scorer = adapter.fit(sx, sy, generator=make_generator(config.seed, i))
            probs = scorer.predict(qx).numpy().astype(np.float64)
            per_class = episode_metrics(ep.query_targets, probs, ep.classes, config.threshold)
            ep_records: list[dict[str, Any]] = []
            ep_scores: list[dict[str, Any]] = []
            for j, cls in enumerate(ep.classes):
                y = ep.query_targets[:, j]
                ep_records.append(
                    {"episode": i, "class": cls, "positives": int(y.sum()), "negatives": int(len(y) - y.sum()),
                     **per_class[cls]}
                )  # fmt: skip
                ep_scores += [
                    {"episode": i, "class": cls, "row": int(r), "target": int(t), "score": float(s)}
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


def _pair_metrics(
    model: Any,
    meta: Mapping[str, Any],
    cache: CacheReader,
    split: MetaSplit,
    pool: np.ndarray,
    normalisation: str,
    device: Any,
    config: EvaluateConfig,
    progress: Progress,
) -> dict[str, Any]:
    """Pair AUC and similarity accuracy of a Siamese run on a fixed balanced pair set from the meta-test pool."""
    import torch
    import torch.nn.functional as F

    from cxr_tools.data.pairs import PairSampler
    from cxr_tools.eval.metrics import class_metrics, mean_ci
    from cxr_tools.models.inputs import to_model_input
    from cxr_tools.models.siamese import similarity
    from cxr_tools.runtime.seeding import numpy_generator

    extra = dict(meta.get("extra") or {})
    rule = str(extra.get("pair_rule") or "same-set")
    sampler = PairSampler(cache.index, list(split.test), rows=pool, rule=rule)
    pairs = sampler.sample(config.pairs, numpy_generator(config.seed, _PAIR_KEY))
    rows = pairs.rows()
    model.eval()
    chunks = []
    with progress.task("pairs", total=len(rows)) as task, torch.no_grad():
        for start in range(0, len(rows), 256):
            x = to_model_input(cache.read(rows[start : start + 256]), normalisation, device)
            chunks.append(F.normalize(model(x).float(), dim=1).cpu())
            task.advance(min(256, len(rows) - start))
    emb = torch.cat(chunks)
    where = np.searchsorted(rows, pairs.left), np.searchsorted(rows, pairs.right)
    distance = str(extra.get("distance") or "cosine")
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


def _json_safe(obj: Any) -> Any:
    """NaN / inf as None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
