"""Engine of ``cxr meta-train CACHE -o RUN``: (first-order) MAML on the meta-train classes of a cache.

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
``RUN/model/`` (training kind ``maml``; the MAML settings, meta-split and cache manifest hash in ``model.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from cxr_tools.models.checkpoints import model_meta, save_model_dir
from cxr_tools.models.factory import initial_model
from cxr_tools.models.lineage import write_lineage
from cxr_tools.runtime import lifecycle
from cxr_tools.runtime.distributed import average_gradients, gather_objects, shard_indices
from cxr_tools.runtime.lifecycle import run_in_context
from cxr_tools.runtime.options import RunOptions
from cxr_tools.runtime.progress import Progress, null_progress
from cxr_tools.runtime.seeding import derive_seed

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from cxr_tools.data.caches.format import CacheReader
    from cxr_tools.data.sampling.episodes import Episode, EpisodeSampler
    from cxr_tools.data.splits.meta import MetaSplit
    from cxr_tools.runtime.lifecycle import RuntimeContext

RUN_KIND = "meta-train"
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
        inner_lr, adapt_steps, first_order, engine: the MAML inner loop (:class:`MamlConfig`).
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
    return MamlConfig(config.inner_lr, config.adapt_steps, config.first_order, config.engine)


def meta_train(config: MetaTrainConfig, progress: Progress | None = None) -> MetaTrainResult:
    """Meta-train a model with (first-order) MAML; see the module docstring for what is written where."""

    progress = null_progress(progress)
    maml = _validate_config(config)
    spec = config.episode_spec
    cache = open_cache(config.cache)
    split, train_sampler, val_sampler, pools = meta_samplers(
        cache, config.meta_split, config.pool_seed, spec, validation=config.val_episodes > 0
    )
    maml = MamlConfig(maml.inner_lr, maml.adapt_steps, maml.first_order, resolve_engine(maml.engine))
    val_list = val_sampler.fixed_list(config.val_episodes, derive_seed(config.seed, _VAL_KEY)) if val_sampler else []
    validation = validation_record(val_sampler, config.ways, config.val_episodes)
    data = _MetaData(cache, train_sampler, val_list, split, pools, validation)
    return run_in_context(config, lambda ctx: _fit(config, maml, ctx, data, progress))


@dataclass(frozen=True)
class _MetaData:
    """What meta-training reads: cache, meta-train sampler, fixed meta-val list, meta-split and its pools' rows."""

    cache: CacheReader
    train_sampler: EpisodeSampler
    val_list: list[Episode]
    split: MetaSplit
    pools: dict[str, np.ndarray]
    validation: dict[str, Any]  # how the weights are selected (run.json ``validation``)


def _fit(
    config: MetaTrainConfig, maml: MamlConfig, ctx: RuntimeContext, data: _MetaData, progress: Progress
) -> MetaTrainResult:
    """The body of :func:`meta_train`, run by :func:`~cxr_tools.runtime.lifecycle.run_in_context`."""

    dist, device, cache, val_list = ctx.dist, ctx.device, data.cache, data.val_list
    model, origin = initial_model(config.init, config.backbone, config.ways, int(cache.image_shape[0]))
    check_batch_independent(model)
    model.to(device)
    run = lifecycle.open_run_dir(config, RUN_KIND, ctx)
    if dist.is_main:
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

    def batches_fn(epoch: int, start: int = 0) -> range:
        first = epoch * config.val_every
        return range(first + start, min(first + config.val_every, total_steps))

    watch = CollapseWatch()

    def step_fn(step: int, backward: Callable[[torch.Tensor], None]) -> dict[str, float]:
        session["tasks"] += config.meta_batch
        keys = [(config.seed, _TRAIN_KEY, step, t) for t in my_tasks]
        values = meta_gradient(model, data.train_sampler, cache, keys, maml, device, backward) if my_tasks else {}
        watch.update(step + 1, values, announce=dist.is_main)
        return values

    def sync(m: nn.Module) -> None:
        average_gradients(m, dist, weight=float(len(my_tasks)))

    def validate_fn() -> dict[str, float]:
        mine = [val_list[i] for i in shard_indices(len(val_list), dist.rank, dist.world_size)]
        parts = gather_objects(evaluate_episodes(model, cache, mine, maml, device), dist)
        return summarise_episodes([r for part in parts for r in part], prefix="val_")

    loop = lifecycle.make_loop(
        config,
        ctx,
        run,
        model,
        optimizer,
        progress,
        step_fn=step_fn,
        batches_fn=batches_fn,
        validate_fn=validate_fn if val_list else None,
        max_epochs=epochs,
        max_steps=total_steps,
        monitor="val_auc" if val_list else None,
        mode="max",
        grad_clip=config.grad_clip,
        manual_backward=True,
        grad_sync_fn=sync if dist.distributed else None,
        extra_state=lambda: {"collapse": watch.state_dict()},
        load_extra_state=lambda state: watch.load_state_dict(state.get("collapse") or {}),
    )
    result = lifecycle.fit(
        loop,
        f"Out of memory meta-training {config.meta_batch} tasks of {data.train_sampler.spec.images} images at "
        f"{min(cache.image_shape)} px ({'first' if config.first_order else 'second'} order) on {device}.",
        "Lower --meta-batch, --queries or --adapt-steps, use --first-order, or a cache at a smaller --size.",
    )
    model_dir = None
    selected = "last"
    collapse = watch.report()  # without validation's verdict unless the run completed
    if result.status == "completed" and dist.is_main:
        selected = lifecycle.load_selected(run, model)
        collapse = watch.report(lifecycle.best_record(run) if selected == "best" else {})
        run.update_info(validation=data.validation, collapse=collapse)
        settings = {k: getattr(config, k) for k in ("ways", "shots", "queries", "meta_batch", "meta_lr")}
        extra = {
            "maml": {**asdict(maml), **settings},
            "head": "episode slots: output j scores the episode's j-th class; adapt before scoring",
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
        meta = model_meta(cache, model, [], "maml", extra)
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
        engine=maml.engine,
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
    )
