"""Engine of ``cxr train CACHE -o RUN --model NAME``: the supervised multi-label baseline.

One sigmoid output per finding and BCE-with-logits (findings are not mutually exclusive: no softmax). The
uncertainty policy is applied at load time (``ignore`` masks uncertain entries out of the loss and out of
the validation AUC, ``zeros`` / ``ones`` map them). ``--balance sampler`` draws class-balanced batches
(:class:`~cxr_tools.data.sampling.balance.BalancedSampler`, within the train split), ``--balance weights`` uses
``pos_weight`` = negatives / positives per class. Validation computes the ROC AUC of every class on the val
split after each epoch, in eval mode; their mean (``val_auc``) picks ``best.pt``, drives early stopping, and
the best weights become ``RUN/model/``, whose card records (``extra.finetune``) the fine-tune budget ``cxr
evaluate RUN`` adapts it with, so ``cxr evaluate --method scratch --match RUN`` copies the real budget.

``--classes base`` trains the meta-split's meta-train classes only, on the meta-train image pool (images
carrying no meta-val / meta-test finding, :func:`~cxr_tools.data.splits.meta.meta_split_pools` with ``--pool-seed``):
the pre-training of the few-shot fine-tune baseline, whose held-out classes must never have been trained,
neither as a head column nor through their images.

The run lifecycle (:mod:`cxr_tools.runtime.lifecycle`) provides checkpoints, bit-identical resume, preemption
and DDP. For resume to be exact, an epoch's batches depend only on ``(seed, epoch)``: the order
comes from :func:`~cxr_tools.runtime.seeding.numpy_generator` ``(seed, epoch)`` (or the balanced sampler's
own ``(seed, epoch)`` draws) and each image's augmentation from ``(seed, epoch, position)``. ``--batch-size``
is the *global* batch: under ``torchrun`` each global batch is split over the ranks, so one process and N
processes see the same batches. Images of a batch are read from the cache in one call.

This module is orchestration only: the run lifecycle is :mod:`cxr_tools.runtime.lifecycle`, the batches
:mod:`cxr_tools.data.sampling.batches`, the rows and classes :mod:`cxr_tools.data.sampling.selection`, the loss
:mod:`cxr_tools.methods.losses` and the AUC :func:`cxr_tools.eval.metrics.class_metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from cxr_tools.data.labels import UNCERTAINTY_POLICIES, apply_uncertainty
from cxr_tools.data.sampling.balance import BalancedSampler, class_weights
from cxr_tools.data.sampling.batches import Augment, LabelledBatches, batch_count, make_batch_loader, plan_batches
from cxr_tools.data.sampling.selection import open_training_data
from cxr_tools.errors import ConfigError, DataError
from cxr_tools.eval.metrics import class_metrics
from cxr_tools.eval.thresholds import choose_threshold
from cxr_tools.methods.losses import masked_bce
from cxr_tools.models.factory import check_model_name, create_for_images
from cxr_tools.models.registry import normalise
from cxr_tools.runtime import lifecycle
from cxr_tools.runtime.checkpointing import FrozenWeights
from cxr_tools.runtime.devices import autocast_context
from cxr_tools.runtime.estimate import EstimateSettings, quick_try
from cxr_tools.runtime.lifecycle import FitReport, plan_in_context, run_in_context
from cxr_tools.runtime.options import TrainingOptions, check_training_options
from cxr_tools.runtime.progress import Progress
from cxr_tools.runtime.seeding import numpy_generator
from cxr_tools.runtime.trainer import LoopParts

if TYPE_CHECKING:
    from cxr_tools.runtime.estimate import RunPlan
    from cxr_tools.runtime.lifecycle import RuntimeContext

log = logging.getLogger(__name__)

BALANCE_MODES = ("none", "sampler", "weights")


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
        freeze: train the head only on frozen pretrained features (``--freeze``; foundation encoders).
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
    freeze: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainRunResult(FitReport):
    """What ``cxr train`` did. ``val_auc`` holds the per-class AUCs of the best epoch (None: undefined, the
    val split has one class only)."""

    model: str
    labels: tuple[str, ...]
    monitor: str
    best_metric: float | None
    val_auc: dict[str, float | None]
    val_images: int


def train(config: TrainConfig, progress: Progress | None = None) -> TrainRunResult:
    """Train the supervised baseline described by ``config`` (module docstring); resumes an incomplete run."""

    _check_config(config)
    return cast("TrainRunResult", run_in_context(config, lambda ctx: _train(config, ctx, progress)))


def plan_train(config: TrainConfig) -> RunPlan:
    """``cxr train --dry-run``: the plan and its estimate from a few steps timed in memory; nothing is written."""
    _check_config(config)
    return plan_in_context(config, lambda ctx: _train(config, ctx, None, dry_run=True))


def _train(
    config: TrainConfig, ctx: RuntimeContext, progress: Progress | None, dry_run: bool = False
) -> TrainRunResult | RunPlan:
    """The body of :func:`train` (and of :func:`plan_train`), run by
    :func:`~cxr_tools.runtime.lifecycle.run_in_context`."""

    cache, labels, train_rows, val_rows = open_training_data(
        config.cache, config.classes, config.meta_split, config.pool_seed
    )
    train_t, train_m = apply_uncertainty(cache.raw_labels(labels)[train_rows], config.uncertainty)
    val_t, val_m = apply_uncertainty(cache.raw_labels(labels)[val_rows], config.uncertainty)
    n_train = len(train_rows)
    global_batches = batch_count(n_train, config.batch_size, ctx.dist.world_size)
    if global_batches == 0:
        raise DataError(
            f"The train split has {n_train} images, too few for one batch of {config.batch_size}.",
            "Lower --batch-size or use a larger cache.",
        )

    side = int(min(cache.image_shape))
    model = create_for_images(
        config.model, side, f"cache {cache.path}", num_classes=len(labels), norm=config.norm, weights=config.weights
    )
    if config.freeze:
        from cxr_tools.models.backbones import freeze_features

        freeze_features(model)
    frozen = frozen_weights(model) if config.freeze else None  # checkpoints name it instead of holding it
    net, optimizer, schedule = lifecycle.make_optimisation(model, ctx, config, steps_per_epoch=global_batches)
    sampler = BalancedSampler(train_t, seed=config.seed, mask=train_m) if config.balance == "sampler" else None
    pos_weight = None
    if config.balance == "weights":
        weights = class_weights(train_t, train_m, max_weight=config.max_pos_weight)
        pos_weight = torch.from_numpy(weights).to(ctx.device)
    data = LabelledBatches(cache, train_rows, train_t, train_m, Augment() if config.augment else None, config.seed)

    def order(epoch: int) -> np.ndarray:
        if sampler is not None:
            return sampler.indices(epoch)
        return numpy_generator(config.seed, epoch).permutation(n_train)

    def batches_fn(epoch: int, start: int) -> Any:
        plan = plan_batches(order(epoch), config.batch_size, ctx.dist)[start:]
        return make_batch_loader(data, [(epoch, p) for p in plan], config.workers, ctx.device)

    norm_kind = str(model.normalisation)
    session_steps = [0]

    def step_fn(batch: Any) -> dict[str, Any]:
        session_steps[0] += 1
        x, y, m = (t.to(ctx.device, non_blocking=True) for t in batch)
        logits = net(normalise(x, norm_kind))
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
                    logits = model(normalise(x.to(ctx.device), norm_kind)).float()
                losses.append(float(masked_bce(logits, y.to(ctx.device), m.to(ctx.device), None, "sum")))
                probs.append(torch.sigmoid(logits).cpu().numpy())
        return validation_metrics(labels, val_t, val_m, np.concatenate(probs), sum(losses))

    has_val = len(val_rows) > 0
    if not has_val:
        log.warning("The cache has no val split: no validation; the final weights become the model.")
    monitor, mode = ("val_auc", "max") if has_val else ("train_loss", "min")
    parts = LoopParts(step_fn, batches_fn, validate_fn if has_val else None, frozen=frozen)
    estimate = EstimateSettings(
        hint=quick_try("train", "--model conv4 --epochs 3", side), validation_steps=len(val_rows) / val_batch / 3
    )
    if dry_run:
        probe = lifecycle.epoch_loop(
            config, ctx, None, net, optimizer, schedule, None, parts, monitor=monitor, mode=mode, estimate=estimate
        )
        steps = min(global_batches * config.epochs, config.max_steps or global_batches * config.epochs)
        epochs = f"{config.epochs} epochs of {global_batches} batches of {config.batch_size}"
        plan = [
            ("data", f"{config.cache}: {n_train} train / {len(val_rows)} val images at {side} px"),
            ("model", f"{config.model}, {len(labels)} outputs ({', '.join(labels)})"),
            ("steps", f"{steps} ({epochs})"),
        ]
        return lifecycle.dry_run(probe, "train", config.output, ctx, plan)
    run = lifecycle.open_run_dir(replace(config, cache=Path(config.cache).resolve()), "train", ctx)
    loop = lifecycle.epoch_loop(
        config, ctx, run, net, optimizer, schedule, progress, parts, monitor=monitor, mode=mode, estimate=estimate
    )
    fit = lifecycle.fit(
        loop,
        f"Out of memory training with batch size {config.batch_size} at {side} px on {ctx.device}.",
        "Lower --batch-size (or preprocess the cache at a smaller --size).",
    )
    model_dir = None
    if fit.status == "completed" and ctx.dist.is_main:
        lifecycle.load_selected(run, model, frozen)
        from cxr_tools.data.sampling.selection import pool_record
        from cxr_tools.data.splits.patients import patients_of
        from cxr_tools.methods.adapters import finetune_record
        from cxr_tools.models.checkpoints import model_meta, save_model_dir
        from cxr_tools.models.lineage import write_lineage

        extra = {
            "uncertainty": config.uncertainty,
            "balance": config.balance,
            "classes_rule": "base" if tuple(config.classes) == ("base",) else "explicit",
            "best_epoch": fit.best_epoch,
            "monitor": monitor,
            "best_metric": fit.best_metric,
            "finetune": finetune_record("head"),
            "frozen_features": config.freeze,
            **validation_thresholds(labels, lifecycle.best_record(run)),
        }
        meta = model_meta(cache, model, labels, "supervised", extra)
        meta["lineage"] = write_lineage(
            run.model_dir,
            meta,
            run=run.path,
            patients=patients_of(cache.index, train_rows, val_rows),
            **pool_record(cache, config),
        )
        save_model_dir(model, meta, run.model_dir)
        model_dir = run.model_dir
    best = lifecycle.best_record(run)
    return TrainRunResult(
        **lifecycle.fit_report(
            run, model_dir, fit, ctx, samples=session_steps[0] * config.batch_size, train_images=n_train
        ),
        model=config.model,
        labels=tuple(labels),
        monitor=monitor,
        best_metric=fit.best_metric,
        val_auc={lab: lifecycle.finite_or_none(best.get(f"val_auc/{lab}")) for lab in labels},
        val_images=len(val_rows),
    )


def frozen_weights(model: Any) -> FrozenWeights | None:
    """What a frozen run's checkpoints keep in place of the weights its model folder leaves out (a foundation
    encoder's ``unsaved_prefixes``): the model folder's own reload recipe, architecture and ``model_args`` (which
    holds the encoder's weight checksum). None for a model that saves every weight (a zoo CNN's frozen backbone
    stays in the checkpoints: nothing records where its weights came from)."""
    prefixes = tuple(getattr(model, "unsaved_prefixes", ()))
    if not prefixes:
        return None
    identity = {"architecture": str(model.model_name), "model_args": dict(model.model_args)}
    hint = "Restore the encoder files the run was started with, or pass --overwrite to train again."
    return FrozenWeights(prefixes, identity, hint)


def _check_config(config: TrainConfig) -> None:
    if config.uncertainty not in UNCERTAINTY_POLICIES:
        raise ConfigError(
            f"Unknown uncertainty policy '{config.uncertainty}'.", f"Use one of: {', '.join(UNCERTAINTY_POLICIES)}."
        )
    if config.balance not in BALANCE_MODES:
        raise ConfigError(f"Unknown --balance '{config.balance}'.", f"Use one of: {', '.join(BALANCE_MODES)}.")
    check_training_options(config)
    check_model_name(config.model)


def validation_metrics(
    labels: Sequence[str], targets: np.ndarray, mask: np.ndarray, probs: np.ndarray, loss_sum: float
) -> dict[str, float]:
    """``val_loss``, ``val_auc`` (mean over classes with a defined AUC), ``val_auc/<class>`` and
    ``val_threshold/<class>``.

    The per-class AUC is :func:`~cxr_tools.eval.metrics.class_metrics`' (scikit-learn), over unmasked entries;
    NaN when the val split holds one class only. The threshold maximises F1 on the val split
    (:func:`~cxr_tools.eval.thresholds.choose_threshold`); the best epoch's are saved in the model card.
    """

    out: dict[str, float] = {"val_loss": loss_sum / max(1.0, float(mask.sum()))}
    aucs = []
    for j, label in enumerate(labels):
        keep = mask[:, j]
        auc = class_metrics(targets[keep, j], probs[keep, j])["auc"] if keep.any() else math.nan
        out[f"val_auc/{label}"] = auc
        out[f"val_threshold/{label}"] = choose_threshold(targets[keep, j], probs[keep, j]) if keep.any() else math.nan
        if not math.isnan(auc):
            aucs.append(auc)
    out["val_auc"] = float(np.mean(aucs)) if aucs else math.nan
    out["val_classes_with_auc"] = float(len(aucs))
    return out


def validation_thresholds(labels: Sequence[str], best: dict[str, Any]) -> dict[str, Any]:
    """The model card's ``thresholds`` (per label, chosen on the val split at the selected epoch; None where none
    could be) and their ``threshold_rule``: what ``cxr predict`` decides with when it has no support set."""

    chosen = {label: lifecycle.finite_or_none(best.get(f"val_threshold/{label}")) for label in labels}
    if not any(v is not None for v in chosen.values()):
        return {}
    epoch = best.get("epoch")
    return {
        "thresholds": chosen,
        "threshold_rule": f"max F1 on the validation split at the selected epoch{f' ({epoch})' if epoch else ''}",
    }
