"""Engine of ``cxr meta-train CACHE -o RUN``: (first-order) MAML or ProtoNet-ML on the meta-train classes of a cache.

``--algorithm maml | fomaml | protonet`` (``--first-order`` = ``fomaml``). ProtoNet-ML (MetaChest's multi-label
prototypical network, :mod:`cxr_tools.methods.protonet`) trains the embedding on the same episodes, validation,
collapse watch and runtime as MAML; only the per-episode loss differs (no head, no inner loop).

What a run does (docs/science.md):

* **Meta-split.** Classes go to meta-train / meta-val / meta-test (``--meta-split``; default: the cache's split,
  else MetaChest for NIH labels), images to disjoint pools by patient
  (:func:`~cxr_tools.data.splits.meta.meta_split_pools`, re-checked by ``check_pools``). Training episodes come
  only from the meta-train classes and pool, validation episodes only from the meta-val ones; meta-test classes
  and images are never read.
* **Episodes and budget.** ``--episodes`` tasks, ``--meta-batch`` per meta-step: ``ceil(episodes / meta_batch)``
  meta-steps. Task ``t`` of meta-step ``s`` is drawn with the generator ``(seed, s, t)`` alone, so resuming and
  sharding tasks over DDP ranks need no sampler state.
* **Head.** ``--ways`` outputs; output ``j`` scores the episode's ``j``-th class (slots shuffled per task), so the
  meta-learned head carries no class identity and is re-adapted per episode. BCE-with-logits over multi-hot
  targets; BatchNorm on frozen running statistics (:mod:`cxr_tools.methods.maml.norm`).
* **Validation.** Every ``--val-every`` meta-steps, ``--val-episodes`` fixed meta-val episodes (fewer-way ones
  when ``--ways`` cannot be formed: ``splits.validation_sampler``) pick the weights by mean AUC. A run stuck at
  the label prior is reported (:mod:`cxr_tools.methods.collapse`).
* **Runtime.** :mod:`cxr_tools.runtime.lifecycle`: resume (bit-identical on CPU), preemption (``--requeue``),
  ``metrics.jsonl``, progress, DDP (a meta-batch's tasks sharded over ranks, meta-gradients averaged).

The run directory gets ``RUN/meta_split.json`` (readable with :func:`~cxr_tools.data.splits.meta.load_meta_split`) and
``RUN/model/`` (training kind ``maml`` or ``protonet``; the algorithm's settings, meta-split and cache manifest hash
in ``model.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.sampling.episodes import EpisodeOptions, episode_list_hash, save_episode_list
from cxr_tools.data.sampling.meta_samplers import meta_samplers, validation_record
from cxr_tools.data.splits.meta import save_meta_split
from cxr_tools.data.splits.patients import patients_of
from cxr_tools.errors import ConfigError
from cxr_tools.methods.collapse import CollapseWatch, unusable
from cxr_tools.methods.episodes import evaluate_episodes, meta_gradient, summarise_episodes
from cxr_tools.methods.maml import check_batch_independent, resolve_engine
from cxr_tools.methods.maml.config import ENGINES, MamlConfig
from cxr_tools.methods.protonet import ALGORITHMS, EMBEDDING_DIM, RULE, evaluate_protonet_episodes, protonet_gradient
from cxr_tools.models import save_model_dir
from cxr_tools.models.checkpoints import model_meta
from cxr_tools.models.factory import initial_model
from cxr_tools.models.lineage import write_lineage
from cxr_tools.runtime import lifecycle
from cxr_tools.runtime.distributed import average_gradients, gather_objects, shard_indices
from cxr_tools.runtime.estimate import EstimateSettings, maml_estimate, quick_try
from cxr_tools.runtime.lifecycle import run_in_context
from cxr_tools.runtime.options import RunOptions
from cxr_tools.runtime.progress import Progress, null_progress
from cxr_tools.runtime.seeding import derive_seed
from cxr_tools.runtime.trainer import LoopParts

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode, EpisodeSampler
    from cxr_tools.data.splits.meta import MetaSplit
    from cxr_tools.runtime.estimate import RunPlan
    from cxr_tools.runtime.lifecycle import RuntimeContext

RUN_KIND = "meta-train"
_ORDER = {"maml": "second order", "fomaml": "first order"}
VAL_EPISODES_FILE = "val_episodes.json"
_VAL_KEY, _TRAIN_KEY = 7919, 1  # seed keys: fixed meta-val episodes, training tasks (kept apart)


@dataclass(frozen=True)
class MetaTrainConfig(RunOptions, EpisodeOptions):
    """Settings of ``cxr meta-train`` (the CLI defaults).

    Attributes:
        cache: the cache directory (``cxr preprocess`` output).
        output: the run directory to write.
        ways, shots, queries (default 10 here), images_per_patient, meta_split: the episodes of meta-training and
            meta-validation (:class:`~cxr_tools.data.sampling.episodes.EpisodeOptions`).
        algorithm: ``maml``, ``fomaml`` or ``protonet`` (:mod:`cxr_tools.methods.protonet`).
        inner_lr, adapt_steps, first_order, engine: the MAML inner loop (:class:`MamlConfig`); ``first_order``
            is the older spelling of ``algorithm: fomaml``.
        meta_lr: Adam learning rate of the outer (meta) update.
        meta_batch: episodes per meta-step.
        episodes: meta-training budget in episodes; ``ceil(episodes / meta_batch)`` meta-steps are made.
        backbone: zoo model name; None = ``conv4``, or the ``--init`` run's architecture.
        init: None (random initialisation), ``imagenet``, or a run / model directory whose backbone starts MAML.
        pool_seed: seed distributing negative patients over the meta-split pools; keep it fixed so every method
            is evaluated on the same meta-test pool.
        val_every: meta-steps between validations (an "epoch" of the training loop).
        val_episodes: fixed meta-val episodes per validation (0 = no validation; the last weights are kept).
        grad_clip: max global norm of the meta-gradient (None = off).
        log_every_steps: meta-steps between ``kind: step`` records in metrics.jsonl (default 10 here).
        Device, seed (model initialisation, training tasks, validation episodes), run directory and
        checkpoints: :class:`~cxr_tools.runtime.options.RunOptions`.
    """

    cache: Path
    output: Path
    queries: int = field(default=10, kw_only=True)
    inner_lr: float = 0.01
    meta_lr: float = 0.0001
    adapt_steps: int = 5
    meta_batch: int = 4
    episodes: int = 20000
    first_order: bool = False
    algorithm: str = "maml"
    backbone: str | None = None
    init: str | None = None
    engine: str = "auto"
    pool_seed: int = 0
    val_every: int = 100
    val_episodes: int = 100
    grad_clip: float | None = None
    log_every_steps: int = field(default=10, kw_only=True)


@dataclass(frozen=True)
class MetaTrainResult:
    """What a ``cxr meta-train`` session achieved.

    ``status`` is ``completed`` or ``interrupted`` (rerun the same command to resume). ``model_dir`` is set once
    the run completed. ``tasks_per_second`` is this session's training tasks over the wall time of its training
    loop (data, meta-steps, validation, checkpoints, logs; not start-up).
    """

    run_dir: Path
    status: str
    model_dir: Path | None
    engine: str
    meta_steps: int
    total_meta_steps: int
    episodes_seen: int
    meta_split: dict[str, Any]
    pool_sizes: dict[str, int]
    best_val_auc: float | None
    best_step: int | None
    selected: str
    resumed: bool
    seconds: float
    tasks_per_second: float
    val_episodes_hash: str | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    collapse: dict[str, Any] | None = None
    algorithm: str = "maml"

    @property
    def unusable(self) -> bool:
        """Collapsed, and no selected weights beat the prior on validation: ``cxr meta-train`` exits 1."""
        return unusable(self.collapse)


def _validate_config(config: MetaTrainConfig) -> MamlConfig:
    checks = (
        ("meta_batch", config.meta_batch, 1),
        ("episodes", config.episodes, 1),
        ("val_every", config.val_every, 1),
        ("val_episodes", config.val_episodes, 0),
        ("log_every_steps", config.log_every_steps, 0),
    )
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}.")
    if not (isinstance(config.meta_lr, (int, float)) and math.isfinite(config.meta_lr) and config.meta_lr > 0):
        raise ConfigError(f"--meta-lr must be a number > 0, got {config.meta_lr!r}.", "Try --meta-lr 0.0001.")
    if config.engine not in ENGINES:
        raise ConfigError(f"Unknown MAML engine {config.engine!r}.", f"Choose one of: {', '.join(ENGINES)}.")
    return MamlConfig(config.inner_lr, config.adapt_steps, resolve_algorithm(config) == "fomaml", config.engine)


def resolve_algorithm(config: MetaTrainConfig) -> str:
    """``maml``, ``fomaml`` or ``protonet``: ``--algorithm``, with ``--first-order`` turning ``maml`` into
    ``fomaml``."""
    if config.algorithm not in ALGORITHMS:
        raise ConfigError(f"Unknown --algorithm {config.algorithm!r}.", f"Choose one of: {', '.join(ALGORITHMS)}.")
    if config.first_order and config.algorithm == "protonet":
        raise ConfigError("--first-order is a MAML option; ProtoNet-ML has no inner loop.", "Drop --first-order.")
    return "fomaml" if config.first_order else config.algorithm


def meta_train(config: MetaTrainConfig, progress: Progress | None = None) -> MetaTrainResult:
    """Meta-train a model with (first-order) MAML; see the module docstring for what is written where."""
    return cast("MetaTrainResult", _meta_train(config, progress, dry_run=False))


def plan_meta_train(config: MetaTrainConfig) -> RunPlan:
    """``cxr meta-train --dry-run``: the plan and its estimate from the first meta-step's first inner steps (or
    a few meta-steps), timed in memory; nothing is written."""
    return cast("RunPlan", _meta_train(config, None, dry_run=True))


def _meta_train(config: MetaTrainConfig, progress: Progress | None, dry_run: bool) -> MetaTrainResult | RunPlan:
    progress = null_progress(progress)
    maml = _validate_config(config)
    spec = config.episode_spec
    cache = open_cache(config.cache)
    split, train_sampler, val_sampler, pools = meta_samplers(
        cache, config.meta_split, config.pool_seed, spec, validation=config.val_episodes > 0
    )
    algorithm = resolve_algorithm(config)
    engine = resolve_engine(maml.engine) if algorithm != "protonet" else "func"  # protonet: plain autograd
    maml = MamlConfig(maml.inner_lr, maml.adapt_steps, maml.first_order, engine)
    val_list = val_sampler.fixed_list(config.val_episodes, derive_seed(config.seed, _VAL_KEY)) if val_sampler else []
    validation = validation_record(val_sampler, config.ways, config.val_episodes)
    data = _MetaData(cache, train_sampler, val_list, split, pools, validation, algorithm)
    return run_in_context(config, lambda ctx: _fit(config, maml, ctx, data, progress, dry_run))


@dataclass(frozen=True)
class _MetaData:
    """What meta-training reads: cache, meta-train sampler, fixed meta-val list, meta-split and its pools' rows."""

    cache: CacheReader
    train_sampler: EpisodeSampler
    val_list: list[Episode]
    split: MetaSplit
    pools: dict[str, np.ndarray]
    validation: dict[str, Any]  # how the weights are selected (run.json ``validation``)
    algorithm: str = "maml"


def _fit(
    config: MetaTrainConfig, maml: MamlConfig, ctx: RuntimeContext, data: _MetaData, progress: Progress, dry_run: bool
) -> MetaTrainResult | RunPlan:
    """The body of :func:`meta_train`, run by :func:`~cxr_tools.runtime.lifecycle.run_in_context`."""

    dist, device, cache, val_list = ctx.dist, ctx.device, data.cache, data.val_list
    model, origin = initial_model(config.init, config.backbone, config.ways, int(cache.image_shape[0]))
    check_batch_independent(model)
    model.to(device)
    run = None if dry_run else lifecycle.open_run_dir(config, RUN_KIND, ctx)
    protonet = data.algorithm == "protonet"
    if dist.is_main and run is not None:
        run.update_info(algorithm=data.algorithm)  # `cxr runs` tells MAML and ProtoNet-ML runs apart
        save_meta_split(run.path, data.split)
        if val_list:
            about = {"split": "val", "spec": {**vars(data.train_sampler.spec), "ways": data.validation["ways"]}}
            save_episode_list(run.path / VAL_EPISODES_FILE, val_list, about, fingerprint=cache.manifest_hash)
    total_steps = -(-config.episodes // config.meta_batch)
    epochs = -(-total_steps // config.val_every)
    my_tasks = shard_indices(config.meta_batch, dist.rank, dist.world_size)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.meta_lr)
    session = {"tasks": 0}
    val_hash = episode_list_hash(val_list, cache.manifest_hash) if val_list else None
    pool_sizes = {name: len(rows) for name, rows in data.pools.items()}

    def batches_fn(epoch: int, start: int) -> range:
        first = epoch * config.val_every
        return range(first + start, min(first + config.val_every, total_steps))

    watch = CollapseWatch(advice="Lower --meta-lr.") if protonet else CollapseWatch()

    def step_fn(step: int, backward: Callable[[torch.Tensor], None]) -> dict[str, float]:
        session["tasks"] += config.meta_batch
        keys = [(config.seed, _TRAIN_KEY, step, t) for t in my_tasks]
        if not my_tasks:
            values: dict[str, float] = {}
        elif protonet:
            values = protonet_gradient(model, data.train_sampler, cache, keys, device, backward)
        else:
            values = meta_gradient(model, data.train_sampler, cache, keys, maml, device, backward)
        watch.update(step + 1, values, announce=dist.is_main)
        return values

    def sync(m: nn.Module) -> None:
        average_gradients(m, dist, weight=float(len(my_tasks)))

    def validate_fn() -> dict[str, float]:
        mine = [val_list[i] for i in shard_indices(len(val_list), dist.rank, dist.world_size)]
        if protonet:
            parts = gather_objects(evaluate_protonet_episodes(model, cache, mine, device), dist)
        else:
            parts = gather_objects(evaluate_episodes(model, cache, mine, maml, device), dist)
        return summarise_episodes([r for part in parts for r in part], prefix="val_")

    parts = LoopParts(
        step_fn,
        batches_fn,
        validate_fn if val_list else None,
        manual_backward=True,
        grad_sync_fn=sync if dist.distributed else None,
        extra_state=lambda: {"collapse": watch.state_dict()},
        load_extra_state=lambda state: watch.load_state_dict(state.get("collapse") or {}),
    )
    side = int(min(cache.image_shape))
    hint = quick_try("meta-train", "--backbone conv4 --episodes 200", side)
    estimate = (
        EstimateSettings("meta-step", hint)
        if protonet
        else maml_estimate(model, maml.adapt_steps, len(my_tasks), maml.first_order, len(val_list), hint)
    )
    loop = lifecycle.make_loop(
        config,
        ctx,
        run,
        model,
        optimizer,
        progress if run is not None else None,
        parts,
        max_epochs=epochs,
        max_steps=total_steps,
        monitor="val_auc" if val_list else None,
        mode="max",
        grad_clip=config.grad_clip,
        estimate=estimate,
    )
    if run is None:
        return lifecycle.dry_run(loop, RUN_KIND, config.output, ctx, _plan(config, maml, data, total_steps, side))
    order = _ORDER.get(data.algorithm, data.algorithm)
    result = lifecycle.fit(
        loop,
        f"Out of memory meta-training {config.meta_batch} tasks of {data.train_sampler.spec.images} images at "
        f"{min(cache.image_shape)} px ({order}) on {device}.",
        "Lower --meta-batch or --queries, or use a cache at a smaller --size"
        + ("." if protonet else "; or lower --adapt-steps, or use --algorithm fomaml."),
    )
    model_dir = None
    selected = "last"
    collapse = watch.report()  # without validation's verdict unless the run completed
    if result.status == "completed" and dist.is_main:
        selected = lifecycle.load_selected(run, model)
        collapse = watch.report(lifecycle.best_record(run) if selected == "best" else {})
        run.update_info(validation=data.validation, collapse=collapse)
        settings = {k: getattr(config, k) for k in ("ways", "shots", "queries", "meta_batch", "meta_lr")}
        if protonet:
            rule = {"rule": RULE, "distance": "euclidean", "embedding_dim": EMBEDDING_DIM}
            algo: dict[str, Any] = {"protonet": {**rule, **settings}, "head": "unused: scored by prototypes"}
        else:
            algo = {
                "maml": {**asdict(maml), **settings},
                "head": "episode slots: output j scores the episode's j-th class; adapt before scoring",
            }
        extra = {
            **algo,
            "meta_split": data.split.to_dict(),
            "pool_seed": config.pool_seed,
            "pool_sizes": pool_sizes,
            "weights": "best meta-val AUC" if selected == "best" else "last meta-step",
            "validation": data.validation,
            "collapse": collapse,
            "best_val_auc": result.best_metric,
            "meta_steps": result.steps,
            "val_episodes": len(val_list),
            "val_episodes_hash": val_hash,
            **origin,
        }
        patients = patients_of(cache.index, data.pools["train"], *([data.pools["val"]] if val_list else []))
        meta = model_meta(cache, model, [], "protonet" if protonet else "maml", extra)
        meta["lineage"] = write_lineage(
            run.model_dir,
            meta,
            run=run.path,
            patients=patients,
            meta_split=data.split.to_dict(),
            pool="meta-train+meta-val" if val_list else "meta-train",
            pool_seed=config.pool_seed,
            parents=[origin["init"]] if origin.get("init") not in ("random", "imagenet") else [],
        )
        save_model_dir(model, meta, run.model_dir)
        model_dir = Path(run.model_dir)
    return MetaTrainResult(
        run_dir=Path(config.output),
        status=result.status,
        model_dir=model_dir,
        engine=maml.engine if not protonet else "none",
        meta_steps=result.steps,
        total_meta_steps=total_steps,
        episodes_seen=result.steps * config.meta_batch,
        meta_split=data.split.to_dict(),
        pool_sizes=pool_sizes,
        best_val_auc=result.best_metric,
        best_step=lifecycle.best_step(run) if result.best_metric is not None else None,
        selected=selected,
        resumed=result.resumed,
        seconds=result.seconds,
        tasks_per_second=session["tasks"] / result.seconds if result.seconds > 0 else 0.0,
        val_episodes_hash=val_hash,
        last_metrics=dict(result.last_metrics),
        validation=data.validation,
        collapse=collapse,
        algorithm=data.algorithm,
    )


def _plan(config: MetaTrainConfig, maml: MamlConfig, data: _MetaData, steps: int, side: int) -> list[tuple[str, str]]:
    """The rows ``cxr meta-train --dry-run`` prints (with its estimate)."""
    pools = "/".join(str(len(data.pools[k])) for k in ("train", "val", "test"))
    steps_of = f"{steps} of {config.meta_batch} tasks, {data.algorithm}"
    if data.algorithm != "protonet":
        steps_of += f" ({_ORDER[data.algorithm]}), {maml.adapt_steps} inner steps, engine {maml.engine}"
    return [
        ("data", f"{config.cache}: {side} px, pool images train/val/test {pools}"),
        ("classes", f"meta-train {', '.join(data.split.train)}; meta-val {', '.join(data.split.val)}"),
        ("model", f"{config.backbone or config.init or 'conv4'} (init {config.init or 'random'})"),
        ("episodes", f"{config.ways}-way {config.shots}-shot, {config.queries} queries; {config.episodes} episodes"),
        ("meta-steps", steps_of),
        ("validation", f"{len(data.val_list)} meta-val episodes every {config.val_every} meta-steps"),
    ]
