"""Engine of ``cxr train-siamese CACHE -o RUN --backbone NAME``: a Siamese network with contrastive loss.

Twin zoo backbones with shared weights, a linear projection to ``--embedding-dim`` and L2 normalisation
(:mod:`cxr_tools.models.siamese`), trained with the Hadsell et al. (2006) contrastive loss
(:mod:`cxr_tools.methods.contrastive`) on pairs from :class:`~cxr_tools.data.sampling.pairs.PairSampler`: balanced
positives / negatives, never two images of one patient, frontal views only, drawn from the index alone.

Each epoch draws ``pairs_per_epoch`` training pairs from ``numpy_generator(seed, epoch)`` (so resume is
exact) and augments each side from ``(seed, epoch, pair, side)``. Validation uses one fixed pair set drawn
once from the seed on the val split: pair AUC of the similarity (threshold-free, monitored for ``best.pt``
and early stopping), the contrastive loss, and the accuracy at the threshold that maximises it on these
pairs - reported, never a fixed 0.5 (docs/science.md). The best epoch's threshold is stored in the model
card (``extra.threshold``) for ``cxr evaluate`` / ``cxr similarity``.

``--backbone-from RUN`` starts from the backbone of a finished ``cxr train`` or ``cxr train-siamese`` run
(its feature extractor; the projection head starts fresh). The architecture must be the one asked for
(``--backbone``) and the model options are taken from that run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cxr_tools.config import check_at_least
from cxr_tools.data.sampling.batches import Augment, CacheImages, EpochPairs, PairBatches, make_batch_loader
from cxr_tools.data.sampling.pairs import PAIR_RULES, PairSampler
from cxr_tools.data.sampling.selection import open_training_data
from cxr_tools.errors import ConfigError, DataError
from cxr_tools.methods.contrastive import check_margin, contrastive_loss
from cxr_tools.methods.pair_validation import validate_pairs, validation_pairs
from cxr_tools.models.factory import backbone_from_run, check_model_name, create_for_images
from cxr_tools.models.registry import normalise
from cxr_tools.models.siamese import SiameseNet, check_distance
from cxr_tools.runtime import lifecycle
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

VAL_PAIRS_KEY = 0x5A1  # seed key of the fixed validation pair set (validation_pairs(seed, key))


@dataclass(frozen=True)
class SiameseConfig(TrainingOptions):
    """Options of ``cxr train-siamese`` (CLI defaults). Saved as ``RUN/config.yaml``.

    Attributes:
        cache, output: the cache to read and the run directory to write.
        backbone, weights, norm: zoo model of the twin network, pretrained weights, normalisation layer.
        backbone_from: run directory (or model folder) whose trained backbone to start from.
        embedding_dim: size of the L2-normalised embedding.
        margin, distance: contrastive loss margin and ``cosine`` / ``euclidean`` distance.
        pair_rule: ``same-set`` (identical finding sets) or ``shares-finding``.
        classes, meta_split: label columns defining finding sets (empty = all; ``base`` = meta-train classes).
        views: views allowed in pairs (default frontal: PA, AP, unknown).
        pairs_per_epoch: training pairs per epoch (None = number of usable training images).
        val_pairs: size of the fixed validation pair set (at most; fewer if the split is small).
        Training length, optimiser, schedule and run handling: :class:`~cxr_tools.runtime.options.TrainingOptions`;
        here ``batch_size`` counts pairs and ``patience`` watches the validation pair AUC.
    """

    cache: Path
    output: Path
    backbone: str = "resnet18"
    weights: str | None = None
    norm: str | None = None
    backbone_from: Path | None = None
    embedding_dim: int = 256
    margin: float = 1.0
    distance: str = "cosine"
    pair_rule: str = "same-set"
    classes: tuple[str, ...] = ()
    meta_split: str | None = None
    views: tuple[str, ...] = ("PA", "AP", "")
    pairs_per_epoch: int | None = None
    val_pairs: int = 1000


@dataclass(frozen=True, kw_only=True)
class SiameseResult(FitReport):
    """What ``cxr train-siamese`` did; the validation figures are those of the best epoch."""

    backbone: str
    embedding_dim: int
    distance: str
    margin: float
    pair_rule: str
    labels: tuple[str, ...]
    val_pair_auc: float | None
    val_accuracy: float | None
    val_threshold: float | None
    val_pairs: int
    val_pairs_hash: str


def train_siamese(config: SiameseConfig, progress: Progress | None = None) -> SiameseResult:
    """Train the Siamese network described by ``config`` (module docstring); resumes an incomplete run."""

    _check_config(config)
    return cast("SiameseResult", run_in_context(config, lambda ctx: _train_siamese(config, ctx, progress)))


def plan_train_siamese(config: SiameseConfig) -> RunPlan:
    """``cxr train-siamese --dry-run``: the plan and its estimate from a few steps timed in memory; nothing is
    written."""
    _check_config(config)
    return plan_in_context(config, lambda ctx: _train_siamese(config, ctx, None, dry_run=True))


def _train_siamese(
    config: SiameseConfig, ctx: RuntimeContext, progress: Progress | None, dry_run: bool = False
) -> SiameseResult | RunPlan:
    """The body of :func:`train_siamese` (and of :func:`plan_train_siamese`), run by
    :func:`~cxr_tools.runtime.lifecycle.run_in_context`."""

    cache, labels, train_rows, val_rows = open_training_data(
        config.cache, config.classes, config.meta_split, config.pool_seed
    )
    views = tuple(config.views) if config.views and "all" not in config.views else None
    train_pairs = PairSampler(cache.index, labels, rows=train_rows, rule=config.pair_rule, views=views)
    if train_pairs.uncertain_dropped:
        log.info("%d training image(s) with an uncertain label are left out of pairs.", train_pairs.uncertain_dropped)
    val_set = validation_pairs(
        cache, labels, val_rows, config.pair_rule, views, config.val_pairs, numpy_generator(config.seed, VAL_PAIRS_KEY)
    )
    per_epoch = config.pairs_per_epoch or train_pairs.num_images
    n_batches = per_epoch // config.batch_size
    if n_batches == 0:
        raise DataError(
            f"{per_epoch} pairs per epoch make no batch of {config.batch_size} pairs.",
            "Lower --batch-size or raise --pairs-per-epoch.",
        )
    per_epoch = n_batches * config.batch_size

    backbone = _make_backbone(config, cache)
    net_model = SiameseNet(backbone, config.distance)
    has_val = val_set is not None
    monitor, mode = ("val_pair_auc", "max") if has_val else ("train_loss", "min")
    net, optimizer, schedule = lifecycle.make_optimisation(
        net_model, ctx, config, steps_per_epoch=n_batches, monitor="val_pair_auc"
    )
    images = CacheImages(cache, Augment() if config.augment else None, config.seed)
    data = PairBatches(images, EpochPairs(train_pairs, per_epoch, config.seed))
    norm_kind = str(backbone.normalisation)

    def batches_fn(epoch: int, start: int) -> Any:
        keys = []
        for b in range(start, n_batches):
            pos = np.arange(b * config.batch_size, (b + 1) * config.batch_size, dtype=np.int64)
            keys.append((epoch, pos[ctx.dist.rank :: ctx.dist.world_size]))
        return make_batch_loader(data, keys, config.workers, ctx.device)

    session_steps = [0]

    def step_fn(batch: Any) -> dict[str, Any]:
        session_steps[0] += 1
        xa, xb, y = (t.to(ctx.device, non_blocking=True) for t in batch)
        za, zb = net(normalise(xa, norm_kind), normalise(xb, norm_kind))
        loss = contrastive_loss(za, zb, y, margin=config.margin, distance=config.distance)
        return {"loss": loss}

    val_batch = config.val_batch_size or 2 * config.batch_size

    def validate_fn() -> dict[str, float]:
        if not ctx.dist.is_main or val_set is None:
            return {}
        return validate_pairs(
            net_model, images, val_set, val_batch, ctx.device, norm_kind, config.margin, config.distance, config.amp
        )

    parts = LoopParts(step_fn, batches_fn, validate_fn if has_val else None)
    side = int(min(cache.image_shape))
    val_images = 2 * len(val_set) if val_set is not None else 0
    estimate = EstimateSettings(
        hint=quick_try("train-siamese", "--backbone conv4 --epochs 3", side),
        validation_steps=val_images / (2 * val_batch) / 3,
    )
    if dry_run:
        probe = lifecycle.epoch_loop(
            config, ctx, None, net, optimizer, schedule, None, parts, monitor=monitor, mode=mode, estimate=estimate
        )
        steps = min(n_batches * config.epochs, config.max_steps or n_batches * config.epochs)
        plan = [
            ("data", f"{config.cache}: {per_epoch} pairs per epoch, {val_images // 2} val pairs, at {side} px"),
            ("model", f"{config.backbone}, {config.embedding_dim}-d embedding, {config.distance} distance"),
            ("steps", f"{steps} ({config.epochs} epochs of {n_batches} batches of {config.batch_size} pairs)"),
        ]
        return lifecycle.dry_run(probe, "train-siamese", config.output, ctx, plan)
    run = lifecycle.open_run_dir(replace(config, cache=Path(config.cache).resolve()), "train-siamese", ctx)
    loop = lifecycle.epoch_loop(
        config, ctx, run, net, optimizer, schedule, progress, parts, monitor=monitor, mode=mode, estimate=estimate
    )
    fit = lifecycle.fit(
        loop,
        f"Out of memory training with batch size {config.batch_size} at {min(cache.image_shape)} px on {ctx.device}.",
        "Lower --batch-size (or preprocess the cache at a smaller --size).",
    )
    best = lifecycle.best_record(run)
    model_dir = None
    if fit.status == "completed" and ctx.dist.is_main:
        lifecycle.load_selected(run, net_model)
        from cxr_tools.data.sampling.selection import pool_record
        from cxr_tools.data.splits.patients import patients_of
        from cxr_tools.models.checkpoints import model_meta, save_model_dir
        from cxr_tools.models.lineage import write_lineage

        extra = {
            "embedding_dim": config.embedding_dim,
            "distance": config.distance,
            "margin": config.margin,
            "l2_normalised": True,
            "similarity": "1 - distance / 2",
            "pair_rule": config.pair_rule,
            "pair_labels": list(labels),
            "threshold": best.get("val_threshold"),
            "val_pair_auc": best.get("val_pair_auc"),
            "val_pairs_hash": val_set.digest() if val_set is not None else None,
            "backbone_from": str(config.backbone_from) if config.backbone_from else None,
            "best_epoch": fit.best_epoch,
        }
        meta = model_meta(cache, backbone, [], "siamese", extra)
        meta["lineage"] = write_lineage(
            run.model_dir,
            meta,
            run=run.path,
            patients=patients_of(cache.index, train_rows, val_rows),
            parents=[config.backbone_from] if config.backbone_from else [],
            **pool_record(cache, config),
        )
        save_model_dir(backbone, meta, run.model_dir)
        model_dir = run.model_dir
    return SiameseResult(
        **lifecycle.fit_report(
            run, model_dir, fit, ctx, samples=session_steps[0] * config.batch_size, train_images=train_pairs.num_images
        ),
        backbone=str(backbone.model_name),
        embedding_dim=config.embedding_dim,
        distance=config.distance,
        margin=config.margin,
        pair_rule=config.pair_rule,
        labels=tuple(labels),
        val_pair_auc=lifecycle.finite_or_none(best.get("val_pair_auc")),
        val_accuracy=lifecycle.finite_or_none(best.get("val_accuracy")),
        val_threshold=lifecycle.finite_or_none(best.get("val_threshold")),
        val_pairs=len(val_set) if val_set is not None else 0,
        val_pairs_hash=val_set.digest() if val_set is not None else "",
    )


def _check_config(config: SiameseConfig) -> None:
    check_distance(config.distance)
    if config.pair_rule not in PAIR_RULES:
        raise ConfigError(f"Unknown --pair-rule '{config.pair_rule}'.", f"Use one of: {', '.join(PAIR_RULES)}.")
    check_at_least("--embedding-dim", config.embedding_dim)
    check_at_least("--val-pairs", config.val_pairs, 2)
    check_at_least("--pairs-per-epoch", config.pairs_per_epoch)
    check_training_options(config)
    check_model_name(config.backbone)
    check_margin(config.margin)


def _make_backbone(config: SiameseConfig, cache: Any) -> Any:
    """The twin backbone with its projection head; from ``--backbone-from`` when given."""

    side, where = int(min(cache.image_shape)), f"cache {cache.path}"
    if config.backbone_from is None:
        return create_for_images(
            config.backbone, side, where, num_classes=config.embedding_dim, norm=config.norm, weights=config.weights
        )
    return backbone_from_run(config.backbone_from, config.backbone, config.embedding_dim, side, where, config.norm)
