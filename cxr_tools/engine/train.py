"""Engine of ``cxr train CACHE -o RUN --model NAME``: the supervised multi-label baseline.

One sigmoid output per finding and BCE-with-logits (findings are not mutually exclusive: no softmax). The
uncertainty policy is applied at load time (``ignore`` masks uncertain entries out of the loss and out of
the validation AUC, ``zeros`` / ``ones`` map them). ``--balance sampler`` draws class-balanced batches
(:class:`~cxr_tools.data.sampling.BalancedSampler`, within the train split), ``--balance weights`` uses
``pos_weight`` = negatives / positives per class. Validation computes the ROC AUC of every class on the val
split after each epoch, in eval mode; their mean (``val_auc``) picks ``best.pt``, drives early stopping, and
the best weights become ``RUN/model/``.

``--classes base`` trains the meta-split's meta-train classes only, on the meta-train image pool (images
carrying no meta-val / meta-test finding, :func:`~cxr_tools.data.splits.meta_split_pools` with ``--pool-seed``):
the pre-training of the few-shot fine-tune baseline, whose held-out classes must never have been trained,
neither as a head column nor through their images.

The runtime (:class:`~cxr_tools.runtime.trainer.TrainLoop`) provides checkpoints, bit-identical resume,
preemption and DDP. For resume to be exact, an epoch's batches depend only on ``(seed, epoch)``: the order
comes from :func:`~cxr_tools.runtime.seeding.numpy_generator` ``(seed, epoch)`` (or the balanced sampler's
own ``(seed, epoch)`` draws) and each image's augmentation from ``(seed, epoch, position)``. ``--batch-size``
is the *global* batch: under ``torchrun`` each global batch is split over the ranks, so one process and N
processes see the same batches. Images of a batch are read from the cache in one call.

The helpers at the bottom (runtime set-up, class resolution, batch readers) are shared with
:mod:`cxr_tools.engine.train_siamese`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cxr_tools.errors import ConfigError, DataError, ModelError
from cxr_tools.runtime.progress import Progress

if TYPE_CHECKING:
    import torch

    from cxr_tools.data.cache import CacheReader
    from cxr_tools.data.splits import MetaSplit
    from cxr_tools.data.torch_data import Augment
    from cxr_tools.runtime.distributed import DistInfo
    from cxr_tools.runtime.rundir import RunDir

log = logging.getLogger(__name__)
R = TypeVar("R")

BALANCE_MODES = ("none", "sampler", "weights")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """Options shared by ``cxr train`` and ``cxr train-siamese``: training length, optimiser, runtime.

    Keyword-only, so each command's own fields (``cache``, ``output``, ...) come first in its constructor.

    Attributes:
        epochs, max_steps: training length (max_steps, when set, stops earlier).
        batch_size: global batch size (split over ranks under torchrun).
        lr, weight_decay, optimizer, momentum: optimiser (``adamw`` or ``sgd``).
        schedule, warmup_steps: LR schedule (none, cosine, step, plateau, onecycle) and linear warmup.
        patience: early stopping on the monitored validation metric after this many epochs without
            improvement (None = off).
        augment: light anatomical augmentation of training images.
        val_batch_size: validation batch (None = 2 x batch_size).
        workers, device, amp, threads: data workers, ``--device``, mixed precision on CUDA, CPU threads.
        seed: seeds weights, order, augmentation.
        resume, overwrite, requeue: run-directory handling and SLURM requeue on preemption.
        checkpoint_every_steps, checkpoint_every_minutes: ``last.pt`` policy within epochs.
        log_every_steps: a ``step`` record in metrics.jsonl every N steps (0 = epochs only).
        pool_seed: seed of the meta-split pools for ``classes=("base",)`` (the meta-train pool MAML uses with
            the same seed; recorded in the model's lineage).
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    patience: int | None = None
    augment: bool = True
    val_batch_size: int | None = None
    workers: int = 0
    device: str = "auto"
    amp: bool = False
    threads: int | None = None
    seed: int = 0
    resume: bool = True
    overwrite: bool = False
    requeue: bool = False
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    log_every_steps: int = 50
    pool_seed: int = 0


@dataclass(frozen=True)
class TrainConfig(TrainingOptions):
    """Options of ``cxr train`` (CLI defaults). Saved as ``RUN/config.yaml``.

    Attributes:
        cache, output: the cache to read and the run directory to write.
        model, weights, norm: zoo model name, pretrained weight source, normalisation layer (None = default).
        classes: label columns to train (empty = every label of the cache; ``("base",)`` = meta-train classes).
        meta_split: meta-split for ``base`` (None = the cache's ``meta_split.json``, else MetaChest).
        uncertainty: ``ignore``, ``zeros`` or ``ones``.
        balance: ``none``, ``sampler`` (class-balanced draws) or ``weights`` (BCE ``pos_weight``).
        max_pos_weight: cap on ``pos_weight`` with ``balance=weights``.
        Training length, optimiser, schedule and run handling: :class:`TrainingOptions`.
    """

    cache: Path
    output: Path
    model: str = "resnet18"
    weights: str | None = None
    norm: str | None = None
    classes: tuple[str, ...] = ()
    meta_split: str | None = None
    uncertainty: str = "ignore"
    balance: str = "none"
    max_pos_weight: float | None = None


@dataclass(frozen=True)
class TrainRunResult:
    """What ``cxr train`` did. ``val_auc`` holds the per-class AUCs of the best epoch (None: undefined, the
    val split has one class only). Under torchrun every rank returns one; ``rank`` says which (0 prints)."""

    run_dir: Path
    model_dir: Path | None
    status: str
    model: str
    labels: tuple[str, ...]
    epochs: int
    steps: int
    monitor: str
    best_metric: float | None
    best_epoch: int | None
    val_auc: dict[str, float | None]
    resumed: bool
    stopped_early: bool
    seconds: float
    samples_per_second: float
    device: str
    world_size: int
    train_images: int
    val_images: int
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def train(config: TrainConfig, progress: Progress | None = None) -> TrainRunResult:
    """Train the supervised baseline described by ``config`` (module docstring); resumes an incomplete run."""
    _check_config(config)
    return run_in_context(config, _train, progress)


def _train(config: TrainConfig, ctx: RuntimeContext, progress: Progress | None) -> TrainRunResult:
    """The body of :func:`train`, run by :func:`run_in_context`."""
    import torch

    from cxr_tools.data.labels import apply_uncertainty
    from cxr_tools.data.sampling import BalancedSampler, class_weights
    from cxr_tools.runtime.devices import autocast_context
    from cxr_tools.runtime.seeding import numpy_generator

    cache, labels, train_rows, val_rows = open_training_data(
        config.cache, config.classes, config.meta_split, config.pool_seed
    )
    train_t, train_m = apply_uncertainty(cache.raw_labels(labels)[train_rows], config.uncertainty)
    val_t, val_m = apply_uncertainty(cache.raw_labels(labels)[val_rows], config.uncertainty)
    n_train = len(train_rows)
    global_batches = _batch_count(n_train, config.batch_size, ctx.dist.world_size)
    if global_batches == 0:
        raise DataError(
            f"The train split has {n_train} images, too few for one batch of {config.batch_size}.",
            "Lower --batch-size or use a larger cache.",
        )

    model = build_model(config.model, cache, num_classes=len(labels), norm=config.norm, weights=config.weights)
    net, optimizer, schedule = make_optimisation(model, ctx, config, steps_per_epoch=global_batches)
    sampler = BalancedSampler(train_t, seed=config.seed, mask=train_m) if config.balance == "sampler" else None
    pos_weight = None
    if config.balance == "weights":
        weights = class_weights(train_t, train_m, max_weight=config.max_pos_weight)
        pos_weight = torch.from_numpy(weights).to(ctx.device)
    augment = default_augment() if config.augment else None
    data = LabelledBatches(cache, train_rows, train_t, train_m, augment, config.seed)

    def order(epoch: int) -> np.ndarray:
        if sampler is not None:
            return sampler.indices(epoch)
        return numpy_generator(config.seed, epoch).permutation(n_train)

    def batches_fn(epoch: int, start: int = 0) -> Any:
        plan = plan_batches(order(epoch), config.batch_size, ctx.dist)[start:]
        return make_batch_loader(data, [(epoch, p) for p in plan], config.workers, ctx.device)

    norm_kind = str(model.normalisation)

    counter = {"n": 0}

    def step_fn(batch: Any) -> dict[str, Any]:
        counter["n"] += 1
        x, y, m = (t.to(ctx.device, non_blocking=True) for t in batch)
        logits = net(normalise_input(x, norm_kind))
        return {"loss": masked_bce(logits, y, m, pos_weight)}

    val_batch = config.val_batch_size or 2 * config.batch_size
    val_data = LabelledBatches(cache, val_rows, val_t, val_m, None, config.seed)

    def validate_fn() -> dict[str, float]:
        if not ctx.dist.is_main:
            return {}  # rank 0 validates; the loop broadcasts its metrics
        model.eval()
        probs, losses = [], []
        with torch.no_grad():
            for start in range(0, len(val_rows), val_batch):
                x, y, m = val_data[(0, np.arange(start, min(start + val_batch, len(val_rows))))]
                with autocast_context(ctx.device, config.amp):
                    logits = model(normalise_input(x.to(ctx.device), norm_kind)).float()
                losses.append(float(masked_bce(logits, y.to(ctx.device), m.to(ctx.device), None, "sum")))
                probs.append(torch.sigmoid(logits).cpu().numpy())
        return validation_metrics(labels, val_t, val_m, np.concatenate(probs), sum(losses))

    has_val = len(val_rows) > 0
    if not has_val:
        log.warning("The cache has no val split: no validation; the final weights become the model.")
    monitor, mode = ("val_auc", "max") if has_val else ("train_loss", "min")
    run = open_training_run(config, "train", ctx)
    loop = make_train_loop(
        config, ctx, run, net, optimizer, schedule, step_fn, batches_fn, validate_fn if has_val else None,
        monitor, mode, progress,
    )  # fmt: skip
    fit = run_fit(loop, config.batch_size, cache, counter)
    model_dir = None
    if fit.status == "completed" and ctx.dist.is_main:
        load_best(run, model)
        from cxr_tools.models.checkpoints import save_model_dir

        extra = {
            "uncertainty": config.uncertainty,
            "balance": config.balance,
            "classes_rule": "base" if tuple(config.classes) == ("base",) else "explicit",
            "best_epoch": fit.best_epoch,
            "monitor": monitor,
            "best_metric": fit.best_metric,
        }
        from cxr_tools.data.splits import patients_of
        from cxr_tools.models.lineage import write_lineage

        meta = model_meta(cache, model, labels, "supervised", extra)
        meta["lineage"] = write_lineage(
            run.model_dir, meta, run=run.path, patients=patients_of(cache.index, train_rows, val_rows),
            **pool_record(cache, config),
        )  # fmt: skip
        save_model_dir(model, meta, run.model_dir)
        model_dir = run.model_dir
    best = best_record(run)
    return TrainRunResult(
        run_dir=run.path,
        model_dir=model_dir,
        status=fit.status,
        model=config.model,
        labels=tuple(labels),
        epochs=fit.epochs,
        steps=fit.steps,
        monitor=monitor,
        best_metric=fit.best_metric,
        best_epoch=fit.best_epoch,
        val_auc={lab: finite_or_none(best.get(f"val_auc/{lab}")) for lab in labels},
        resumed=fit.resumed,
        stopped_early=fit.stopped_early,
        seconds=fit.seconds,
        samples_per_second=fit.samples_per_second,
        device=ctx.device_name,
        world_size=ctx.dist.world_size,
        train_images=n_train,
        val_images=len(val_rows),
        rank=ctx.dist.rank,
    )


def _check_config(config: TrainConfig) -> None:
    from cxr_tools.data.labels import UNCERTAINTY_POLICIES

    if config.uncertainty not in UNCERTAINTY_POLICIES:
        raise ConfigError(
            f"Unknown uncertainty policy '{config.uncertainty}'.", f"Use one of: {', '.join(UNCERTAINTY_POLICIES)}."
        )
    if config.balance not in BALANCE_MODES:
        raise ConfigError(f"Unknown --balance '{config.balance}'.", f"Use one of: {', '.join(BALANCE_MODES)}.")
    check_common(config)
    check_model_name(config.model)


def check_model_name(name: str) -> None:
    """Refuse an unknown zoo model before any work (suggesting close names)."""
    from cxr_tools.models.registry import is_model, suggestion

    if not is_model(name):
        raise ModelError(f"Unknown model '{name}'.", suggestion(name))


def check_common(config: Any) -> None:
    """Checks shared by the training commands (batch size, epochs, learning rate, optimiser)."""
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {config.batch_size}).")
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (got {config.epochs}).")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1 (got {config.max_steps}).")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ConfigError(f"--lr must be a positive number (got {config.lr}).")
    if config.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0 (got {config.weight_decay}).")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer '{config.optimizer}'.", f"Use one of: {', '.join(OPTIMIZERS)}.")
    if config.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (got {config.workers}).")


# --- shared by the training engines ---------------------------------------------------------------------------


@dataclass
class RuntimeContext:
    """Device, distributed position and clean-up of one training command."""

    device: torch.device
    device_name: str
    dist: DistInfo
    owns_group: bool

    def close(self, completed: bool = False) -> None:
        """Leave the process group: after a barrier when this rank completed (every rank then has finished its
        collectives), at once after an error (a barrier could wait forever on a rank that died)."""
        if self.owns_group:
            from cxr_tools.runtime.distributed import cleanup

            cleanup(self.dist if completed else None)


def make_train_loop(
    config: TrainingOptions,
    ctx: RuntimeContext,
    run: RunDir,
    net: Any,
    optimizer: Any,
    schedule: Any,
    step_fn: Any,
    batches_fn: Any,
    validate_fn: Any,
    monitor: str,
    mode: str,
    progress: Progress | None,
) -> Any:
    """The shared :class:`~cxr_tools.runtime.trainer.TrainLoop` of both trainers, set from their common options."""
    from cxr_tools.runtime.checkpointing import CheckpointPolicy, EarlyStopping
    from cxr_tools.runtime.trainer import TrainLoop

    return TrainLoop(
        run,
        net,
        optimizer,
        schedule,
        step_fn=step_fn,
        batches_fn=batches_fn,
        validate_fn=validate_fn,
        max_epochs=config.epochs,
        max_steps=config.max_steps,
        monitor=monitor,
        mode=mode,
        early_stopping=EarlyStopping(config.patience, mode=mode) if config.patience else None,
        checkpoint=CheckpointPolicy(config.checkpoint_every_steps, config.checkpoint_every_minutes),
        progress=progress,
        requeue=config.requeue,
        device=ctx.device,
        amp=config.amp,
        dist=ctx.dist,
        log_every_steps=config.log_every_steps,
    )


def run_in_context(config: Any, body: Callable[[Any, RuntimeContext, Any], R], progress: Any) -> R:
    """``body(config, ctx, progress)`` inside the runtime of ``config`` (device, seeds, process group).

    ``body`` is a function of its own so that its objects (the DDP-wrapped model among them) are released when
    it returns, before the process group is left after a barrier: gloo can abort at exit otherwise.
    """
    ctx = setup(config.device, config.threads, config.seed)
    completed = False
    try:
        result = body(config, ctx, progress)
        completed = True
        return result
    finally:
        ctx.close(completed)


def setup(device_spec: str, threads: int | None, seed: int) -> RuntimeContext:
    """Resolve the device, join a torchrun/srun process group if launched so, seed everything."""
    import torch
    import torch.distributed as tdist

    from cxr_tools.runtime.devices import describe_device, resolve_device, set_threads
    from cxr_tools.runtime.distributed import init_distributed
    from cxr_tools.runtime.seeding import seed_everything

    set_threads(threads)
    device = resolve_device(device_spec)
    already = tdist.is_available() and tdist.is_initialized()
    dist = init_distributed(backend="auto", device=device)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(seed)
    return RuntimeContext(device, describe_device(device), dist, owns_group=dist.distributed and not already)


def open_training_cache(path: Path) -> CacheReader:
    """Open a complete cache (a clear error for a missing or incomplete one)."""
    from cxr_tools.data.cache import open_cache

    return open_cache(path)


def base_split(cache: CacheReader, classes: Sequence[str], meta_split: str | None) -> MetaSplit | None:
    """The meta-split of ``--classes base`` (``meta_split``, else the cache's, else MetaChest); None otherwise."""
    from cxr_tools.data.splits import load_meta_split, parse_meta_split

    if [c.strip().lower() for c in classes if c and c.strip()] != ["base"]:
        return None
    spec: Any = meta_split if meta_split is not None else load_meta_split(cache.path)
    return parse_meta_split(spec, cache.labels)


def pool_record(cache: CacheReader, config: Any) -> dict[str, Any]:
    """The pool a trainer's ``config`` draws from, as keywords of :func:`~cxr_tools.models.lineage.write_lineage`."""
    split = base_split(cache, config.classes, config.meta_split)
    if split is None:
        return {"pool": "all"}
    return {"pool": "meta-train", "meta_split": split.to_dict(), "pool_seed": config.pool_seed}


def resolve_classes(
    cache: CacheReader, classes: Sequence[str], meta_split: str | None, pool_seed: int = 0
) -> tuple[list[str], np.ndarray | None]:
    """The label columns to use and, for ``base``, the meta-train image pool of ``pool_seed`` (cache rows)."""
    from cxr_tools.data.splits import meta_split_pools

    names = [c.strip() for c in classes if c and c.strip()]
    if not names or [n.lower() for n in names] == ["all"]:
        return list(cache.labels), None
    split = base_split(cache, names, meta_split)
    if split is not None:
        pool = meta_split_pools(cache.index, cache.labels, split, seed=pool_seed)["train"]
        log.info("Training the meta-train (base) classes %s on %d pool images.", ", ".join(split.train), len(pool))
        return list(split.train), pool
    if any(n.lower() in {"base", "all"} for n in names):
        raise ConfigError("--classes base / all cannot be mixed with class names.", "Give one or the other.")
    unknown = [n for n in names if n not in cache.labels]
    if unknown:
        raise ConfigError(
            f"Class(es) {', '.join(unknown)} are not in cache {cache.path}.",
            f"Its labels: {', '.join(cache.labels)}; or use --classes base for the meta-train classes.",
        )
    if len(set(names)) != len(names):
        raise ConfigError("--classes lists a class more than once.")
    return names, None


def open_training_data(
    cache_path: Path, classes: Sequence[str], meta_split: str | None, pool_seed: int = 0
) -> tuple[CacheReader, list[str], np.ndarray, np.ndarray]:
    """The cache, the label columns to train (:func:`resolve_classes`) and the train and val rows of their pool."""
    cache = open_training_cache(cache_path)
    labels, pool = resolve_classes(cache, classes, meta_split, pool_seed)
    return cache, labels, split_rows(cache, "train", pool), split_rows(cache, "val", pool, required=False)


def split_rows(cache: CacheReader, split: str, pool: np.ndarray | None, *, required: bool = True) -> np.ndarray:
    """Cache rows of patient split ``split`` (within ``pool`` when given), sorted."""
    col = cache.index["split"].astype(str).str.strip().str.lower().to_numpy()
    rows = cache.index["row"].to_numpy(dtype=np.int64)[col == split]
    if pool is not None:
        rows = np.intersect1d(rows, pool)
    if required and len(rows) == 0:
        present = sorted({s for s in col if s})
        raise DataError(
            f"Cache {cache.path} has no images in split '{split}'"
            + (" within the meta-train pool" if pool is not None else "")
            + ".",
            f"Its splits: {', '.join(present) or 'none'}; recreate the cache with `cxr preprocess --fractions`.",
        )
    return np.sort(rows)


def build_model(name: str, cache: CacheReader, **overrides: Any) -> Any:
    """``create_model(name, **overrides)`` checked against the cache's image size."""
    from cxr_tools.models.registry import create_model, model_card

    card = model_card(name)  # unknown names: a ModelError with suggestions
    side = min(cache.image_shape)
    if side < card.min_image_size:
        raise ConfigError(
            f"Model '{name}' needs images of at least {card.min_image_size} px; cache {cache.path} has {side} px.",
            "Preprocess at a larger --size or pick another --model.",
        )
    return create_model(name, **overrides)


def make_optimisation(
    model: Any, ctx: RuntimeContext, config: Any, *, steps_per_epoch: int, monitor: str = "val_auc"
) -> tuple[Any, Any, Any]:
    """Move ``model`` to the device, wrap it for DDP, and build the optimiser and LR schedule.

    ``monitor`` is the validation metric (to maximise) that the ``plateau`` schedule follows.
    """
    import torch

    from cxr_tools.runtime.distributed import wrap_ddp
    from cxr_tools.runtime.schedules import make_scheduler
    from cxr_tools.runtime.seeding import derive_seed

    model.to(ctx.device)
    if ctx.dist.distributed:
        torch.manual_seed(derive_seed(config.seed, 1, ctx.dist.rank))  # per-rank dropout masks
    net = wrap_ddp(model, ctx.dist, ctx.device)
    params = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer: Any = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    schedule = make_scheduler(
        config.schedule,
        optimizer,
        total_steps=max(total, config.warmup_steps + 1),
        warmup_steps=config.warmup_steps,
        step_size=max(1, total // 3),
        monitor=monitor,
        mode="max",
    )
    return net, optimizer, schedule


def open_training_run(config: Any, kind: str, ctx: RuntimeContext) -> RunDir:
    """Create or reopen the run directory (main rank writes; all ranks wait for it).

    A refusal on the main rank (another command's run, a completed run, changed options) is raised on
    every rank, so no rank waits forever for the others.
    """
    import dataclasses

    from cxr_tools.errors import CxrError
    from cxr_tools.runtime.distributed import broadcast_object
    from cxr_tools.runtime.rundir import open_run

    resolved = dataclasses.replace(config, cache=Path(config.cache).resolve())
    error: CxrError | None = None
    try:
        run = open_run(
            config.output,
            kind,
            resolved,
            resume=config.resume,
            overwrite=config.overwrite,
            is_main=ctx.dist.is_main,
            device=ctx.device_name,
            world_size=ctx.dist.world_size,
        )
    except CxrError as exc:
        if not ctx.dist.distributed:
            raise
        error = exc
    message = broadcast_object(str(error) if error is not None else None, ctx.dist)
    if error is not None:
        raise error
    if message is not None:
        raise ModelError(message)
    return run


@dataclass(frozen=True)
class FitSummary:
    status: str
    epochs: int
    steps: int
    best_metric: float | None
    best_epoch: int | None
    resumed: bool
    stopped_early: bool
    seconds: float
    samples_per_second: float


def run_fit(loop: Any, batch_size: int, cache: CacheReader, session_steps: dict[str, int]) -> FitSummary:
    """``loop.fit()`` with out-of-memory errors turned into an actionable :class:`ResourceError`.

    ``session_steps["n"]`` counts the steps this session ran (the step function increments it), for the
    training throughput (samples/s over the whole fit, validation and checkpoints included).
    """
    from cxr_tools.runtime.devices import explain_out_of_memory

    side = min(cache.image_shape)
    with explain_out_of_memory(
        f"Out of memory training with batch size {batch_size} at {side} px on {loop.device}.",
        "Lower --batch-size (or preprocess the cache at a smaller --size).",
    ):
        result = loop.fit()
    done = int(session_steps.get("n", 0))
    rate = done * batch_size / result.seconds if result.seconds > 0 else 0.0
    return FitSummary(
        result.status,
        result.epochs,
        result.steps,
        result.best_metric,
        result.best_epoch,
        result.resumed,
        result.stopped_early,
        result.seconds,
        rate,
    )


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when missing or NaN (valid JSON in ``--json`` output)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def load_best(run: RunDir, model: Any) -> None:
    """Load ``best.pt`` into ``model`` when it exists (else keep the final weights, with a log line)."""
    from cxr_tools.runtime.checkpointing import load_checkpoint

    if not run.best_checkpoint.is_file():
        log.warning("No best.pt (the monitored metric never improved); the final weights become the model.")
        return
    state = load_checkpoint(run.best_checkpoint)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{run.best_checkpoint} does not fit the model ({exc}).", "Rerun with --overwrite.") from exc


def best_record(run: RunDir) -> dict[str, Any]:
    """The metrics record of the best epoch (the last one flagged ``best``, else the last epoch record)."""
    epochs = [r for r in run.read_metrics() if r.get("kind") == "epoch"]
    flagged = [r for r in epochs if r.get("best")]
    return (flagged or epochs or [{}])[-1]


def model_meta(cache: CacheReader, model: Any, labels: Sequence[str], kind: str, extra: dict) -> dict[str, Any]:
    """The ``meta`` of :func:`save_model_dir` for a model trained on ``cache``."""
    return {
        "labels": list(labels),
        "training": kind,
        "cache_manifest_hash": cache.manifest_hash,
        "image_size": int(min(cache.image_shape)),
        "normalisation": str(model.normalisation),
        "preprocessing": dict(cache.manifest.get("preprocessing") or {}),
        "extra": extra,
    }


def default_augment() -> Augment:
    """The training augmentation (:class:`~cxr_tools.data.torch_data.Augment` defaults)."""
    from cxr_tools.data.torch_data import Augment

    return Augment()


def normalise_input(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Images in [0, 1] mapped to the range the model expects."""
    if kind == "unit":
        return x
    from cxr_tools.models.registry import normalise

    return normalise(x, kind)


def masked_bce(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None, reduction: str = "mean"
) -> torch.Tensor:
    """BCE-with-logits over the unmasked entries (mean over them; ``sum`` for accumulation)."""
    import torch.nn.functional as F

    m = mask.to(logits.dtype)
    losses = F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=pos_weight, reduction="none")
    total = (losses * m.float()).sum()
    if reduction == "sum":
        return total
    return total / m.float().sum().clamp_min(1.0)


def validation_metrics(
    labels: Sequence[str], targets: np.ndarray, mask: np.ndarray, probs: np.ndarray, loss_sum: float
) -> dict[str, float]:
    """``val_loss``, ``val_auc`` (mean over classes with a defined AUC) and ``val_auc/<class>``."""
    out: dict[str, float] = {"val_loss": loss_sum / max(1.0, float(mask.sum()))}
    aucs = []
    for j, label in enumerate(labels):
        keep = mask[:, j]
        auc = roc_auc(targets[keep, j], probs[keep, j])
        out[f"val_auc/{label}"] = auc
        if not math.isnan(auc):
            aucs.append(auc)
    out["val_auc"] = float(np.mean(aucs)) if aucs else math.nan
    out["val_classes_with_auc"] = float(len(aucs))
    return out


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when the targets hold one class only (undefined there, not 0.5).

    The Mann-Whitney statistic with average ranks for ties, which equals ``sklearn.metrics.roc_auc_score``
    (tested) without importing scikit-learn (seconds per process) or computing the thresholded metrics of
    :func:`cxr_tools.eval.metrics.class_metrics`, which are not needed to pick the best epoch.
    """
    y = np.asarray(targets).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _batch_count(n: int, batch_size: int, world_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world_size else 0)


def plan_batches(order: np.ndarray, batch_size: int, dist: DistInfo) -> list[np.ndarray]:
    """This rank's share of every global batch of ``order``.

    A last batch smaller than two images per rank is dropped: BatchNorm cannot normalise one image whose
    feature map is 1 x 1, and a rank without images would hang the gradient all-reduce.
    """
    n = len(order)
    count = _batch_count(n, batch_size, dist.world_size)
    out = []
    for b in range(count):
        batch = np.asarray(order[b * batch_size : (b + 1) * batch_size], dtype=np.int64)
        out.append(batch[dist.rank :: dist.world_size])
    return out


def make_batch_loader(dataset: Any, keys: list[Any], workers: int, device: torch.device) -> Any:
    """A DataLoader yielding ``dataset[key]`` for each key in order (``workers`` processes prefetch).

    With workers, OpenCV's own thread pool is shrunk to one thread in this process first: workers are
    forked, and a child forked while the parent holds a pool of OpenCV threads (from augmenting in-process
    earlier, e.g. validation or a previous run) deadlocks in its first ``cv2.warpAffine``. The images are
    small; OpenCV threads gain nothing here.
    """
    from torch.utils.data import DataLoader

    from cxr_tools.data.torch_data import seed_worker

    if workers:
        import cv2

        cv2.setNumThreads(1)

    return DataLoader(
        dataset,
        sampler=keys,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=seed_worker if workers else None,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


class CacheImages:
    """Reads batches of cache rows as float32 ``[B, 1, H, W]`` in [0, 1], augmented per position.

    The augmentation of an image depends only on ``(seed, epoch, *key)``, so a batch is the same whichever
    process or worker builds it and whenever (resume). Safe in forked DataLoader workers: each process
    opens its own handle on the image store.
    """

    def __init__(self, cache: CacheReader, augment: Augment | None, seed: int) -> None:
        self.cache = cache
        self.augment = augment
        self.seed = int(seed)
        self._pid = os.getpid()
        self._inherited: list[Any] = []

    def _reader(self) -> CacheReader:
        if os.getpid() != self._pid:  # a forked worker: never reuse the parent's HDF5 handle
            self._inherited.append(self.cache)
            self.cache = copy.copy(self.cache)
            self._pid = os.getpid()
        return self.cache

    def load(self, rows: np.ndarray, epoch: int, keys: np.ndarray | None) -> np.ndarray:
        """Images of ``rows``; ``keys[k]`` (an int row) seeds image k's augmentation with seed and epoch."""
        raw = self._reader().read(rows)
        out = np.empty((len(rows), 1, *raw.shape[1:]), dtype=np.float32)
        if self.augment is None or keys is None:
            np.multiply(raw, np.float32(1 / 255.0), out=out[:, 0], casting="unsafe")
            return out
        for k in range(len(rows)):
            rng = np.random.default_rng([self.seed, int(epoch), *(int(v) for v in keys[k])])
            out[k, 0] = self.augment(raw[k], rng) * np.float32(1 / 255.0)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_inherited"] = []
        return state


class LabelledBatches:
    """Map-style dataset: ``[(epoch, positions)]`` -> ``(images, targets, mask)`` of those split positions."""

    def __init__(
        self,
        cache: CacheReader,
        rows: np.ndarray,
        targets: np.ndarray,
        mask: np.ndarray,
        augment: Augment | None,
        seed: int,
    ) -> None:
        self.images = CacheImages(cache, augment, seed)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.mask = np.asarray(mask, dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        epoch, positions = key
        positions = np.asarray(positions, dtype=np.int64)
        x = self.images.load(self.rows[positions], epoch, positions[:, None])
        return torch.from_numpy(x), torch.from_numpy(self.targets[positions]), torch.from_numpy(self.mask[positions])
