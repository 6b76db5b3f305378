"""Engine of ``cxr meta-train CACHE -o RUN``: (first-order) MAML on the meta-train classes of a cache.

What a run does (SCIENCE.md §2–§3):

* **Meta-split.** Classes are split into meta-train / meta-val / meta-test (``--meta-split``; default: the split
  saved in the cache, else MetaChest for NIH label spaces) and the cache's images into disjoint pools
  (:func:`~cxr_tools.data.splits.meta_split_pools`, by patient). Training episodes come *only* from the meta-train
  classes and pool, validation episodes *only* from the meta-val ones; the meta-test classes and images are never
  read (:func:`check_pools` re-checks the pools before training, and the samplers never see the other pools).
* **Episodes and budget.** ``--episodes`` is the meta-training budget in episodes (tasks); one meta-step takes
  ``--meta-batch`` of them, so a run makes ``ceil(episodes / meta_batch)`` meta-steps. Task ``t`` of meta-step
  ``s`` is drawn with the generator ``(seed, s, t)`` alone, so resuming after a kill and sharding tasks over DDP
  ranks need no sampler state.
* **Head.** The model has ``--ways`` outputs and every episode re-uses them: output ``j`` scores the episode's
  ``j``-th class (classes in split order). This is standard N-way MAML: the head's initialisation is meta-learned
  to be a good starting point for *any* class in slot ``j`` and is re-adapted per episode, so the head itself
  carries no class identity. The loss is BCE-with-logits over the episode's multi-hot targets (findings are not
  mutually exclusive).
* **Normalisation.** conv4 uses GroupNorm; BatchNorm backbones (e.g. an ImageNet or supervised ``--init``) run
  with frozen running statistics during adaptation and scoring (:mod:`cxr_tools.methods.maml.norm`), so a query's
  score never depends on its batch-mates.
* **Validation.** Every ``--val-every`` meta-steps, ``--val-episodes`` fixed, seeded meta-val episodes (the list
  and its hash are saved in ``RUN/val_episodes.json``) are adapted with the training inner loop and scored; the
  mean per-episode AUC picks ``checkpoints/best.pt`` and the weights written to ``RUN/model/``.
* **Runtime.** The shared :class:`~cxr_tools.runtime.trainer.TrainLoop` gives resume (bit-identical on CPU),
  SIGTERM/SIGUSR1 preemption with ``--requeue``, ``metrics.jsonl``, progress and DDP: under torchrun the tasks of
  a meta-batch are sharded over ranks and their meta-gradients averaged (weighted by tasks per rank).

The run directory gets ``RUN/meta_split.json`` (readable with :func:`~cxr_tools.data.splits.load_meta_split`) and
``RUN/model/`` (training kind ``maml``; the MAML settings, meta-split and cache manifest hash in ``model.json``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.data.cache import CacheReader, open_cache
from cxr_tools.data.episodes import (
    Episode,
    EpisodeSampler,
    EpisodeSpec,
    episode_list_hash,
    index_patients,
    save_episode_list,
)
from cxr_tools.data.splits import (
    METACHEST,
    SPLITS,
    MetaSplit,
    load_meta_split,
    meta_split_pools,
    parse_meta_split,
    save_meta_split,
)
from cxr_tools.errors import ConfigError, CxrError, DataError, ModelError
from cxr_tools.methods.maml.config import ENGINES, MamlConfig
from cxr_tools.runtime.progress import Progress, null_progress

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxr_tools.runtime.distributed import DistInfo

log = logging.getLogger(__name__)

RUN_KIND = "meta-train"
VAL_EPISODES_FILE = "val_episodes.json"
#: Seed key of the fixed validation episodes (kept apart from the training tasks' keys).
_VAL_KEY = 7919
_TRAIN_KEY = 1


@dataclass(frozen=True)
class MetaTrainConfig:
    """Settings of ``cxr meta-train`` (the CLI defaults).

    Attributes:
        cache: the cache directory (``cxr preprocess`` output).
        output: the run directory to write.
        ways, shots, queries: episode shape (N classes; K positives per class + K negatives; Q likewise).
        images_per_patient: the most images one patient contributes to a task or meta-val episode.
        inner_lr, adapt_steps, first_order, engine: the MAML inner loop (:class:`MamlConfig`).
        meta_lr: Adam learning rate of the outer (meta) update.
        meta_batch: episodes per meta-step.
        episodes: meta-training budget in episodes; ``ceil(episodes / meta_batch)`` meta-steps are made.
        backbone: zoo model name; None = ``conv4``, or the ``--init`` run's architecture.
        init: None (random initialisation), ``imagenet``, or a run / model directory whose backbone starts MAML.
        meta_split: ``auto`` (the cache's saved split, else MetaChest for NIH labels), ``metachest``, a YAML/JSON
            file or ``"train=A,B;val=C;test=D,E"``.
        pool_seed: seed distributing negative patients over the meta-split pools; keep it fixed so every method
            is evaluated on the same meta-test pool.
        val_every: meta-steps between validations (an "epoch" of the training loop).
        val_episodes: fixed meta-val episodes per validation (0 = no validation; the last weights are kept).
        seed: seeds the model initialisation, the training tasks and the validation episodes.
        device, threads, amp: where and how to compute (``amp`` only on CUDA).
        grad_clip: max global norm of the meta-gradient (None = off).
        log_every: meta-steps between ``kind: step`` records in metrics.jsonl.
        checkpoint_every_steps / checkpoint_every_minutes: when to write ``last.pt`` between validations.
        resume, overwrite, requeue: run-directory and preemption behaviour (see the runtime).
    """

    cache: Path
    output: Path
    ways: int = 2
    shots: int = 5
    queries: int = 10
    images_per_patient: int = 1
    inner_lr: float = 0.01
    meta_lr: float = 0.001
    adapt_steps: int = 5
    meta_batch: int = 4
    episodes: int = 20000
    first_order: bool = False
    backbone: str | None = None
    init: str | None = None
    engine: str = "auto"
    meta_split: str = "auto"
    pool_seed: int = 0
    val_every: int = 100
    val_episodes: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: bool = False
    grad_clip: float | None = None
    log_every: int = 10
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    resume: bool = True
    overwrite: bool = False
    requeue: bool = False


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


# --- meta-split and episodes ----------------------------------------------------------------------------------


def resolve_meta_split(spec: str | None, cache_dir: Path, labels: Sequence[str]) -> MetaSplit:
    """The meta-split to use for a cache, resolved against its label space.

    ``auto`` (or empty) takes ``CACHE/meta_split.json`` when the cache has one, else MetaChest when the labels are
    NIH's; any other label space needs an explicit ``--meta-split``.
    """
    text = (spec or "").strip()
    if text.lower() in {"", "auto"}:
        saved = load_meta_split(cache_dir)
        if saved is not None:
            return saved.resolve(labels)
        try:
            return METACHEST.resolve(labels)
        except ConfigError:
            raise ConfigError(
                f"The cache's labels ({', '.join(labels)}) are not NIH's, so the default MetaChest meta-split "
                "does not apply.",
                "Pass --meta-split 'train=A,B;val=C;test=D,E' or a YAML/JSON file with train/val/test class lists.",
            ) from None
    return parse_meta_split(text, labels)


def check_pools(raw: np.ndarray, labels: Sequence[str], split: MetaSplit, pools: dict[str, np.ndarray]) -> None:
    """Refuse pools that would leak: shared images, or a meta-train / meta-val image carrying a later split's class.

    "Carrying" is a positive or uncertain value. :func:`meta_split_pools` guarantees this; the check makes the
    guarantee part of every meta-training run rather than a property of one function.
    """
    names = list(labels)
    seen: set[int] = set()
    for name in SPLITS:
        rows = set(int(r) for r in pools[name])
        if rows & seen:
            raise DataError(f"The meta-{name} image pool shares images with another pool.", "Report this as a bug.")
        seen |= rows
    for i, name in enumerate(("train", "val")):
        later = [c for s in SPLITS[i + 1 :] for c in split.classes(s)]
        cols = [names.index(c) for c in later]
        values = raw[np.asarray(pools[name], dtype=np.int64)][:, cols]
        carried = ((values == 1) | (values == -1)).any(axis=0)
        if carried.any():
            leaked = [c for c, hit in zip(later, carried, strict=True) if hit]
            raise DataError(
                f"The meta-{name} pool holds images labelled {', '.join(leaked)} (a later split's classes).",
                "Report this as a bug.",
            )


def make_sampler(
    raw: np.ndarray,
    labels: Sequence[str],
    split: MetaSplit,
    pools: dict[str, np.ndarray],
    name: str,
    spec: EpisodeSpec,
    *,
    patients: np.ndarray,
) -> EpisodeSampler:
    """The episode sampler of meta-split ``name`` (its classes, its pool); errors say which split is short."""
    try:
        return EpisodeSampler(raw, labels, split.classes(name), pools[name], spec, patients=patients)
    except DataError as exc:
        hint = exc.hint or ""
        if name == "val":
            hint += " (--val-episodes 0 skips validation.)"
        raise DataError(f"Meta-{name} classes/pool: {exc.message}", hint.strip() or None) from None


def episode_tensors(
    cache: CacheReader, episode: Episode, normalisation: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(support_x, support_y, query_x, query_y)`` of an episode: images [n, 1, H, W] in the model's range."""
    import torch

    from cxr_tools.models.inputs import to_model_input

    rows = np.concatenate([episode.support_rows, episode.query_rows])
    x = to_model_input(cache.read(rows), normalisation, device)
    n = len(episode.support_rows)
    sy = torch.from_numpy(episode.support_targets).to(device)
    qy = torch.from_numpy(episode.query_targets).to(device)
    return x[:n], sy, x[n:], qy


def evaluate_episodes(
    model: nn.Module,
    cache: CacheReader,
    episodes: Sequence[Episode],
    maml: MamlConfig,
    device: torch.device,
) -> list[dict[str, float]]:
    """Adapt ``model`` to each episode's support set (MAML inner loop) and score its queries.

    Returns one record per episode: ``auc`` and ``ap`` (means over the episode's classes), the query loss before
    and after adaptation and the support loss before and after. The model is left unchanged and in eval mode.
    """
    import torch

    from cxr_tools.eval.metrics import episode_metrics
    from cxr_tools.methods.maml import adapt, multilabel_bce

    norm = str(getattr(model, "normalisation", "unit"))
    model.eval()
    out = []
    for ep in episodes:
        sx, sy, qx, qy = episode_tensors(cache, ep, norm, device)
        adapted = adapt(model, sx, sy, maml)
        with torch.no_grad():
            logits = adapted(qx)
            before = model(qx)  # the initialisation itself, in eval mode (BatchNorm on running statistics)
            loss_after = float(multilabel_bce(logits, qy))
            loss_before = float(multilabel_bce(before, qy))
        per_class = episode_metrics(ep.query_targets, torch.sigmoid(logits).cpu().numpy(), ep.classes)
        out.append(
            {
                "auc": float(np.nanmean([m["auc"] for m in per_class.values()])),
                "ap": float(np.nanmean([m["ap"] for m in per_class.values()])),
                "query_loss_before": loss_before,
                "query_loss_after": loss_after,
                "support_loss_before": adapted.support_losses[0],
                "support_loss_after": adapted.support_losses[-1],
            }
        )
    return out


# --- the model ------------------------------------------------------------------------------------------------


def build_model(config: MetaTrainConfig, image_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model to meta-train, with ``ways`` outputs, and a description of where its weights came from.

    ``--init RUN`` takes every weight of the run's model except its head (for a Siamese run, the backbone inside
    the wrapper); the architecture and input contract (one channel, the cache's image size) must match.
    """
    from cxr_tools.models import create_model

    init = (config.init or "").strip()
    if init.lower() in {"", "none", "random", "scratch"}:
        name = config.backbone or "conv4"
        return create_model(name, num_classes=config.ways), {"init": "random"}
    if init.lower() == "imagenet":
        name = config.backbone or "conv4"
        return create_model(name, num_classes=config.ways, weights="imagenet"), {"init": "imagenet"}
    return _model_from_run(Path(init), config, image_size)


def _model_from_run(path: Path, config: MetaTrainConfig, image_size: int) -> tuple[nn.Module, dict[str, Any]]:
    from cxr_tools.models import check_compatible, create_model, load_model_dir, read_model_meta
    from cxr_tools.models.checkpoints import load_state_strict

    if not path.exists():
        raise ModelError(
            f"--init {path} does not exist.", "Pass a finished run directory, its model/ folder, or imagenet."
        )
    meta = read_model_meta(path)
    arch = str(meta.get("architecture"))
    if config.backbone and config.backbone != arch:
        raise ModelError(
            f"--init {path} holds a {arch} backbone but --backbone is {config.backbone}.",
            f"Drop --backbone (it follows --init) or pass --backbone {arch}.",
        )
    check_compatible(meta, image_size=image_size, channels=1)
    source, meta = load_model_dir(path)
    source = getattr(source, "backbone", source)  # a Siamese wrapper holds its backbone
    args = {k: v for k, v in dict(meta.get("model_args") or {}).items() if k not in {"num_classes", "weights"}}
    model = create_model(arch, num_classes=config.ways, **args)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    load_state_strict(model, state, source=f"--init {path}", skip_prefixes=("head.",))
    model.normalisation = meta["input"]["normalisation"]
    model.image_size = int(meta["input"].get("image_size") or image_size)
    return model, {"init": str(path), "init_training": meta.get("training"), "init_architecture": arch}


# --- the engine -----------------------------------------------------------------------------------------------


def _validate_config(config: MetaTrainConfig) -> MamlConfig:
    checks = (
        ("meta_batch", config.meta_batch, 1),
        ("episodes", config.episodes, 1),
        ("val_every", config.val_every, 1),
        ("val_episodes", config.val_episodes, 0),
        ("log_every", config.log_every, 0),
    )
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}.")
    if not (isinstance(config.meta_lr, (int, float)) and math.isfinite(config.meta_lr) and config.meta_lr > 0):
        raise ConfigError(f"--meta-lr must be a number > 0, got {config.meta_lr!r}.", "Try --meta-lr 0.001.")
    if config.engine not in ENGINES:
        raise ConfigError(f"Unknown MAML engine {config.engine!r}.", f"Choose one of: {', '.join(ENGINES)}.")
    return MamlConfig(config.inner_lr, config.adapt_steps, config.first_order, config.engine)


def meta_train(config: MetaTrainConfig, progress: Progress | None = None) -> MetaTrainResult:
    """Meta-train a model with (first-order) MAML; see the module docstring for what is written where."""
    import torch

    from cxr_tools.methods.maml import resolve_engine
    from cxr_tools.runtime.devices import describe_device, resolve_device, set_threads
    from cxr_tools.runtime.distributed import broadcast_object, cleanup, init_distributed
    from cxr_tools.runtime.seeding import seed_everything

    progress = null_progress(progress)
    maml = _validate_config(config)
    spec = EpisodeSpec(config.ways, config.shots, config.queries, config.images_per_patient)
    cache = open_cache(config.cache)
    labels = cache.labels
    split = resolve_meta_split(config.meta_split, Path(config.cache), labels)
    raw = cache.raw_labels()
    pools = meta_split_pools(cache.index, labels, split, seed=config.pool_seed)
    check_pools(raw, labels, split, pools)
    # Only the meta-train and meta-val pools reach a sampler; the meta-test pool is dropped here.
    pids = index_patients(cache.index)
    train_sampler = make_sampler(raw, labels, split, pools, "train", spec, patients=pids)
    val_sampler = make_sampler(raw, labels, split, pools, "val", spec, patients=pids) if config.val_episodes else None
    pool_sizes = {name: len(rows) for name, rows in pools.items()}
    del pools
    engine = resolve_engine(maml.engine)
    maml = MamlConfig(maml.inner_lr, maml.adapt_steps, maml.first_order, engine)

    set_threads(config.threads)
    device = resolve_device(config.device)
    dist = init_distributed(device=device)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    completed, model = False, None
    try:
        seed_everything(config.seed)
        image_size = int(cache.image_shape[0])
        model, origin = build_model(config, image_size)
        from cxr_tools.methods.maml import check_batch_independent

        check_batch_independent(model)
        model.to(device)
        val_list = val_sampler.fixed_list(config.val_episodes, seed=_val_seed(config.seed)) if val_sampler else []
        run = _open_run(config, dist, describe_device(device), broadcast_object)
        if dist.is_main:
            save_meta_split(run.path, split)
            if val_list:
                save_episode_list(run.path / VAL_EPISODES_FILE, val_list, {"split": "val", "spec": spec.__dict__},
                                  fingerprint=cache.manifest_hash)  # fmt: skip
        result = _fit(config, maml, run, dist, device, cache, model, origin, train_sampler, val_list, split,
                      pool_sizes, progress)  # fmt: skip
        completed = True
        return result
    finally:
        del model
        cleanup(dist if completed else None)


def _val_seed(seed: int) -> int:
    from cxr_tools.runtime.seeding import derive_seed

    return derive_seed(seed, _VAL_KEY)


def _open_run(config: MetaTrainConfig, dist: DistInfo, device_name: str, broadcast: Any) -> Any:
    """Open the run directory on rank 0 and tell every rank whether that worked (so none waits forever)."""
    from cxr_tools.runtime.rundir import open_run

    error: CxrError | None = None
    run = None
    try:
        run = open_run(
            config.output,
            RUN_KIND,
            config,
            resume=config.resume,
            overwrite=config.overwrite,
            is_main=dist.is_main,
            device=device_name,
            world_size=dist.world_size,
        )
    except CxrError as exc:
        error = exc
    message = broadcast(None if error is None else str(error), dist)
    if error is not None:
        raise error
    if message is not None:
        raise CxrError(f"Rank 0 could not open the run directory: {message}")
    return run


def _fit(
    config: MetaTrainConfig,
    maml: MamlConfig,
    run: Any,
    dist: DistInfo,
    device: torch.device,
    cache: CacheReader,
    model: nn.Module,
    origin: dict[str, Any],
    train_sampler: EpisodeSampler,
    val_list: list[Episode],
    split: MetaSplit,
    pool_sizes: dict[str, int],
    progress: Progress,
) -> MetaTrainResult:
    import torch

    from cxr_tools.eval.metrics import mean_ci
    from cxr_tools.methods.maml import meta_backward
    from cxr_tools.runtime.checkpointing import CheckpointPolicy
    from cxr_tools.runtime.distributed import average_gradients, gather_objects, shard_indices
    from cxr_tools.runtime.seeding import numpy_generator
    from cxr_tools.runtime.trainer import TrainLoop

    total_steps = -(-config.episodes // config.meta_batch)
    epochs = -(-total_steps // config.val_every)
    my_tasks = shard_indices(config.meta_batch, dist.rank, dist.world_size)
    norm = str(getattr(model, "normalisation", "unit"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.meta_lr)
    session = {"tasks": 0}

    def batches_fn(epoch: int, start: int = 0) -> range:
        first = epoch * config.val_every
        return range(first + start, min(first + config.val_every, total_steps))

    def step_fn(step: int) -> dict[str, float]:
        values: dict[str, float] = {}
        if my_tasks:
            episodes = [train_sampler.sample(numpy_generator(config.seed, _TRAIN_KEY, step, t), shuffle=True)
                        for t in my_tasks]  # fmt: skip
            tasks = [episode_tensors(cache, ep, norm, device) for ep in episodes]
            info = meta_backward(model, tasks, maml)
            values["loss"] = info.loss
            if maml.adapt_steps:
                values["support_loss_before"] = float(np.mean([t.support_losses[0] for t in info.tasks]))
                values["support_loss_last_step"] = float(np.mean([t.support_losses[-1] for t in info.tasks]))
        session["tasks"] += config.meta_batch
        return values

    def sync(m: nn.Module) -> None:
        average_gradients(m, dist, weight=float(len(my_tasks)))

    def validate_fn() -> dict[str, float]:
        mine = [val_list[i] for i in shard_indices(len(val_list), dist.rank, dist.world_size)]
        parts = gather_objects(evaluate_episodes(model, cache, mine, maml, device), dist)
        records = [r for part in parts for r in part]
        auc = mean_ci([r["auc"] for r in records])
        out = {"val_auc": auc.mean, "val_auc_ci95": auc.ci95}
        for key in ("ap", "query_loss_before", "query_loss_after", "support_loss_before", "support_loss_after"):
            out[f"val_{key}"] = float(np.nanmean([r[key] for r in records]))
        return out

    loop = TrainLoop(
        run,
        model,
        optimizer,
        step_fn=step_fn,
        batches_fn=batches_fn,
        validate_fn=validate_fn if val_list else None,
        max_epochs=epochs,
        max_steps=total_steps,
        monitor="val_auc" if val_list else None,
        mode="max",
        checkpoint=CheckpointPolicy(config.checkpoint_every_steps, config.checkpoint_every_minutes),
        progress=progress,
        requeue=config.requeue,
        grad_clip=config.grad_clip,
        device=device,
        amp=config.amp,
        dist=dist,
        manual_backward=True,
        grad_sync_fn=sync if dist.distributed else None,
        log_every_steps=config.log_every,
    )
    from cxr_tools.runtime.devices import explain_out_of_memory

    with explain_out_of_memory(
        f"Out of memory meta-training {config.meta_batch} tasks of {train_sampler.spec.images} images at "
        f"{min(cache.image_shape)} px ({'first' if config.first_order else 'second'} order) on {device}.",
        "Lower --meta-batch, --queries or --adapt-steps, use --first-order, or a cache at a smaller --size.",
    ):
        result = loop.fit()
    model_dir = None
    selected = "last"
    if result.status == "completed" and dist.is_main:
        selected = _load_selected(run, model)
        model_dir = _write_model(config, maml, run, cache, model, origin, split, pool_sizes, result, val_list)
    return MetaTrainResult(
        run_dir=Path(config.output),
        status=result.status,
        model_dir=model_dir,
        engine=maml.engine,
        meta_steps=result.steps,
        total_meta_steps=total_steps,
        episodes_seen=result.steps * config.meta_batch,
        meta_split=split.to_dict(),
        pool_sizes=pool_sizes,
        best_val_auc=result.best_metric,
        best_step=_best_step(run) if result.best_metric is not None else None,
        selected=selected,
        resumed=result.resumed,
        seconds=result.seconds,
        tasks_per_second=session["tasks"] / result.seconds if result.seconds > 0 else 0.0,
        val_episodes_hash=episode_list_hash(val_list, cache.manifest_hash) if val_list else None,
        last_metrics=dict(result.last_metrics),
    )


def _best_step(run: Any) -> int | None:
    from cxr_tools.runtime.checkpointing import load_checkpoint

    if not run.best_checkpoint.is_file():
        return None
    return int(load_checkpoint(run.best_checkpoint)["step"])


def _load_selected(run: Any, model: nn.Module) -> str:
    """Load ``best.pt`` (best mean meta-val AUC) into ``model`` when there is one; return which weights it holds."""
    from cxr_tools.runtime.checkpointing import load_checkpoint

    if not run.best_checkpoint.is_file():
        return "last"
    model.load_state_dict(load_checkpoint(run.best_checkpoint)["model"])
    return "best"


def _write_model(
    config: MetaTrainConfig,
    maml: MamlConfig,
    run: Any,
    cache: CacheReader,
    model: nn.Module,
    origin: dict[str, Any],
    split: MetaSplit,
    pool_sizes: dict[str, int],
    result: Any,
    val_list: list[Episode],
) -> Path:
    from cxr_tools.models import save_model_dir

    extra = {
        "maml": {
            "inner_lr": maml.inner_lr,
            "adapt_steps": maml.adapt_steps,
            "first_order": maml.first_order,
            "engine": maml.engine,
            "ways": config.ways,
            "shots": config.shots,
            "queries": config.queries,
            "meta_batch": config.meta_batch,
            "meta_lr": config.meta_lr,
        },
        "head": "episode slots: output j scores the episode's j-th class; adapt before scoring",
        "meta_split": split.to_dict(),
        "pool_seed": config.pool_seed,
        "pool_sizes": pool_sizes,
        "weights": _load_label(run),
        "best_val_auc": result.best_metric,
        "meta_steps": result.steps,
        "val_episodes": len(val_list),
        "val_episodes_hash": episode_list_hash(val_list, cache.manifest_hash) if val_list else None,
        **origin,
    }
    meta = {
        "labels": [],
        "training": "maml",
        "cache_manifest_hash": cache.manifest_hash,
        "image_size": int(cache.image_shape[0]),
        "normalisation": str(getattr(model, "normalisation", "unit")),
        "preprocessing": dict(cache.manifest.get("preprocessing") or {}),
        "extra": extra,
    }
    from cxr_tools.data.splits import patients_of
    from cxr_tools.models.lineage import write_lineage

    pools = meta_split_pools(cache.index, cache.labels, split, seed=config.pool_seed)  # the pools sampled above
    used = [pools["train"], pools["val"]] if val_list else [pools["train"]]
    meta["lineage"] = write_lineage(
        run.model_dir, meta, run=run.path, patients=patients_of(cache.index, *used), meta_split=split.to_dict(),
        pool="meta-train+meta-val" if val_list else "meta-train", pool_seed=config.pool_seed,
        parents=[origin["init"]] if origin.get("init") not in ("random", "imagenet") else [],
    )  # fmt: skip
    save_model_dir(model, meta, run.model_dir)
    return Path(run.model_dir)


def _load_label(run: Any) -> str:
    return "best meta-val AUC" if run.best_checkpoint.is_file() else "last meta-step"
