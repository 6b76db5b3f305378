"""Engine of ``cxr train-siamese CACHE -o RUN --backbone NAME``: a Siamese network with contrastive loss.

Twin zoo backbones with shared weights, a linear projection to ``--embedding-dim`` and L2 normalisation
(:mod:`cxr_tools.models.siamese`), trained with the Hadsell et al. (2006) contrastive loss
(:mod:`cxr_tools.methods.contrastive`) on pairs from :class:`~cxr_tools.data.pairs.PairSampler`: balanced
positives / negatives, never two images of one patient, frontal views only, drawn from the index alone.

Each epoch draws ``pairs_per_epoch`` training pairs from ``numpy_generator(seed, epoch)`` (so resume is
exact) and augments each side from ``(seed, epoch, pair, side)``. Validation uses one fixed pair set drawn
once from the seed on the val split: pair AUC of the similarity (threshold-free, monitored for ``best.pt``
and early stopping), the contrastive loss, and the accuracy at the threshold that maximises it on these
pairs - reported, never a fixed 0.5 (SCIENCE.md §3). The best epoch's threshold is stored in the model
card (``extra.threshold``) for ``cxr evaluate`` / ``cxr similarity``.

``--backbone-from RUN`` starts from the backbone of a finished ``cxr train`` or ``cxr train-siamese`` run
(its feature extractor; the projection head starts fresh). The architecture must be the one asked for
(``--backbone``) and the model options are taken from that run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.engine.train import (
    CacheImages,
    RuntimeContext,
    TrainingOptions,
    best_record,
    build_model,
    check_common,
    check_model_name,
    default_augment,
    finite_or_none,
    load_best,
    make_batch_loader,
    make_optimisation,
    make_train_loop,
    model_meta,
    normalise_input,
    open_training_data,
    open_training_run,
    pool_record,
    roc_auc,
    run_fit,
    run_in_context,
)
from cxr_tools.errors import ConfigError, DataError, ModelError
from cxr_tools.runtime.progress import Progress

log = logging.getLogger(__name__)

VAL_PAIRS_KEY = 0x5A1  # seed key of the fixed validation pair set


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
        Training length, optimiser, schedule and run handling: :class:`~cxr_tools.engine.train.TrainingOptions`;
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


@dataclass(frozen=True)
class SiameseResult:
    """What ``cxr train-siamese`` did; the validation figures are those of the best epoch."""

    run_dir: Path
    model_dir: Path | None
    status: str
    backbone: str
    embedding_dim: int
    distance: str
    margin: float
    pair_rule: str
    labels: tuple[str, ...]
    epochs: int
    steps: int
    best_epoch: int | None
    val_pair_auc: float | None
    val_accuracy: float | None
    val_threshold: float | None
    val_pairs: int
    val_pairs_hash: str
    resumed: bool
    stopped_early: bool
    seconds: float
    samples_per_second: float
    device: str
    world_size: int
    train_images: int
    rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def train_siamese(config: SiameseConfig, progress: Progress | None = None) -> SiameseResult:
    """Train the Siamese network described by ``config`` (module docstring); resumes an incomplete run."""
    _check_config(config)
    from cxr_tools.methods.contrastive import check_margin

    check_margin(config.margin)
    return run_in_context(config, _train_siamese, progress)


def _train_siamese(config: SiameseConfig, ctx: RuntimeContext, progress: Progress | None) -> SiameseResult:
    """The body of :func:`train_siamese`, run by :func:`run_in_context`."""
    from cxr_tools.data.pairs import PairSampler
    from cxr_tools.methods.contrastive import contrastive_loss
    from cxr_tools.models.siamese import SiameseNet

    cache, labels, train_rows, val_rows = open_training_data(
        config.cache, config.classes, config.meta_split, config.pool_seed
    )
    views = tuple(config.views) if config.views and "all" not in config.views else None
    train_pairs = PairSampler(cache.index, labels, rows=train_rows, rule=config.pair_rule, views=views)
    if train_pairs.uncertain_dropped:
        log.info("%d training image(s) with an uncertain label are left out of pairs.", train_pairs.uncertain_dropped)
    val_set = _validation_pairs(cache, labels, val_rows, config, views)
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
    net, optimizer, schedule = make_optimisation(
        net_model, ctx, config, steps_per_epoch=n_batches, monitor="val_pair_auc"
    )
    images = CacheImages(cache, default_augment() if config.augment else None, config.seed)
    data = _PairBatches(images, _EpochPairs(train_pairs, per_epoch, config.seed))
    norm_kind = str(backbone.normalisation)

    def batches_fn(epoch: int, start: int = 0) -> Any:
        keys = []
        for b in range(start, n_batches):
            pos = np.arange(b * config.batch_size, (b + 1) * config.batch_size, dtype=np.int64)
            keys.append((epoch, pos[ctx.dist.rank :: ctx.dist.world_size]))
        return make_batch_loader(data, keys, config.workers, ctx.device)

    counter = {"n": 0}

    def step_fn(batch: Any) -> dict[str, Any]:
        counter["n"] += 1
        xa, xb, y = (t.to(ctx.device, non_blocking=True) for t in batch)
        za, zb = net(normalise_input(xa, norm_kind), normalise_input(xb, norm_kind))
        loss = contrastive_loss(za, zb, y, margin=config.margin, distance=config.distance)
        return {"loss": loss}

    val_batch = config.val_batch_size or 2 * config.batch_size

    def validate_fn() -> dict[str, float]:
        if not ctx.dist.is_main or val_set is None:
            return {}
        return _validate(net_model, images, val_set, val_batch, ctx.device, norm_kind, config)

    run = open_training_run(config, "train-siamese", ctx)
    loop = make_train_loop(
        config, ctx, run, net, optimizer, schedule, step_fn, batches_fn, validate_fn if has_val else None,
        monitor, mode, progress,
    )  # fmt: skip
    fit = run_fit(loop, config.batch_size, cache, counter)
    best = best_record(run)
    model_dir = None
    if fit.status == "completed" and ctx.dist.is_main:
        load_best(run, net_model)
        from cxr_tools.models.checkpoints import save_model_dir

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
        from cxr_tools.data.splits import patients_of
        from cxr_tools.models.lineage import write_lineage

        meta = model_meta(cache, backbone, [], "siamese", extra)
        meta["lineage"] = write_lineage(
            run.model_dir, meta, run=run.path, patients=patients_of(cache.index, train_rows, val_rows),
            parents=[config.backbone_from] if config.backbone_from else [], **pool_record(cache, config),
        )  # fmt: skip
        save_model_dir(backbone, meta, run.model_dir)
        model_dir = run.model_dir
    return SiameseResult(
        run_dir=run.path,
        model_dir=model_dir,
        status=fit.status,
        backbone=str(backbone.model_name),
        embedding_dim=config.embedding_dim,
        distance=config.distance,
        margin=config.margin,
        pair_rule=config.pair_rule,
        labels=tuple(labels),
        epochs=fit.epochs,
        steps=fit.steps,
        best_epoch=fit.best_epoch,
        val_pair_auc=finite_or_none(best.get("val_pair_auc")),
        val_accuracy=finite_or_none(best.get("val_accuracy")),
        val_threshold=finite_or_none(best.get("val_threshold")),
        val_pairs=len(val_set) if val_set is not None else 0,
        val_pairs_hash=val_set.digest() if val_set is not None else "",
        resumed=fit.resumed,
        stopped_early=fit.stopped_early,
        seconds=fit.seconds,
        samples_per_second=fit.samples_per_second,
        device=ctx.device_name,
        world_size=ctx.dist.world_size,
        train_images=train_pairs.num_images,
        rank=ctx.dist.rank,
    )


def _check_config(config: SiameseConfig) -> None:
    from cxr_tools.data.pairs import PAIR_RULES
    from cxr_tools.models.siamese import check_distance

    check_distance(config.distance)
    if config.pair_rule not in PAIR_RULES:
        raise ConfigError(f"Unknown --pair-rule '{config.pair_rule}'.", f"Use one of: {', '.join(PAIR_RULES)}.")
    if config.embedding_dim < 1:
        raise ConfigError(f"--embedding-dim must be at least 1 (got {config.embedding_dim}).")
    if config.val_pairs < 2:
        raise ConfigError(f"--val-pairs must be at least 2 (got {config.val_pairs}).")
    if config.pairs_per_epoch is not None and config.pairs_per_epoch < 1:
        raise ConfigError(f"--pairs-per-epoch must be at least 1 (got {config.pairs_per_epoch}).")
    check_common(config)
    check_model_name(config.backbone)


def _validation_pairs(cache: Any, labels: list[str], rows: np.ndarray, config: SiameseConfig, views: Any) -> Any:
    """The fixed validation pair set (None, with a warning, when the val split cannot make pairs)."""
    from cxr_tools.data.pairs import PairSampler
    from cxr_tools.runtime.seeding import numpy_generator

    if len(rows) == 0:
        log.warning("The cache has no val split: no validation; the final weights become the model.")
        return None
    try:
        sampler = PairSampler(cache.index, labels, rows=rows, rule=config.pair_rule, views=views)
    except DataError as exc:
        log.warning("No validation pairs (%s); the final weights become the model.", exc)
        return None
    n = min(config.val_pairs, max(2, sampler.num_images * 4))
    return sampler.sample(n, numpy_generator(config.seed, VAL_PAIRS_KEY))


def _make_backbone(config: SiameseConfig, cache: Any) -> Any:
    """The twin backbone with its projection head; from ``--backbone-from`` when given."""
    if config.backbone_from is None:
        return build_model(
            config.backbone, cache, num_classes=config.embedding_dim, norm=config.norm, weights=config.weights
        )
    from cxr_tools.models.checkpoints import load_model_dir, load_state_strict

    source, meta = load_model_dir(config.backbone_from)
    arch = str(meta.get("architecture"))
    if arch != config.backbone:
        raise ModelError(
            f"--backbone-from {config.backbone_from} holds a '{arch}' model, not '{config.backbone}'.",
            f"Pass --backbone {arch}, or a run trained with {config.backbone}.",
        )
    args = {k: v for k, v in (meta.get("model_args") or {}).items() if k not in {"num_classes", "weights"}}
    if config.norm is not None and args.get("norm", config.norm) != config.norm:
        raise ModelError(
            f"--backbone-from {config.backbone_from} was trained with norm={args.get('norm')}, not {config.norm}.",
            "Leave --norm unset to use the run's setting.",
        )
    contract = meta.get("input") or {}
    side = int(min(cache.image_shape))
    if contract.get("image_size") and int(contract["image_size"]) != side:
        log.warning(
            "The backbone was trained on %s px images, cache %s is %d px.", contract["image_size"], cache.path, side
        )
    model = build_model(config.backbone, cache, num_classes=config.embedding_dim, **args)
    features = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    load_state_strict(model, features, source=str(config.backbone_from), skip_prefixes=("head.",))
    model.normalisation = str(contract.get("normalisation") or model.normalisation)
    model.pretrained = meta.get("pretrained")
    log.info("Backbone initialised from %s (%s).", meta.get("path"), arch)
    return model


class _EpochPairs:
    """The training pairs of an epoch: ``per_epoch`` pairs drawn from ``numpy_generator(seed, epoch)``."""

    def __init__(self, sampler: Any, per_epoch: int, seed: int) -> None:
        self.sampler, self.per_epoch, self.seed = sampler, int(per_epoch), int(seed)

    def __call__(self, epoch: int) -> Any:
        from cxr_tools.runtime.seeding import numpy_generator

        return self.sampler.sample(self.per_epoch, numpy_generator(self.seed, epoch))


class _PairBatches:
    """Map-style dataset: ``(epoch, pair positions)`` -> ``(left images, right images, targets)``.

    The epoch's pair list is drawn on first use in each process and cached (one epoch at a time).
    """

    def __init__(self, images: CacheImages, train_pairs_fn: Any) -> None:
        self.images = images
        self.pairs_fn = train_pairs_fn
        self._epoch: int | None = None
        self._pairs: Any = None

    def pairs(self, epoch: int) -> Any:
        if self._epoch != epoch:
            self._pairs, self._epoch = self.pairs_fn(epoch), epoch
        return self._pairs

    def __getitem__(self, key: tuple[int, np.ndarray]) -> Any:
        import torch

        epoch, positions = key
        positions = np.asarray(positions, dtype=np.int64)
        pairs = self.pairs(epoch).take(positions)
        side = np.ones((len(positions), 1), dtype=np.int64)
        xa = self.images.load(pairs.left, epoch, np.concatenate([positions[:, None], 0 * side], axis=1))
        xb = self.images.load(pairs.right, epoch, np.concatenate([positions[:, None], side], axis=1))
        return torch.from_numpy(xa), torch.from_numpy(xb), torch.from_numpy(pairs.target)


def _validate(
    net: Any, images: CacheImages, pairs: Any, batch: int, device: Any, norm_kind: str, config: SiameseConfig
) -> dict[str, float]:
    """Embed every image of the validation pairs once (eval mode); pair AUC, loss, accuracy, threshold."""
    import torch

    from cxr_tools.methods.contrastive import best_threshold, contrastive_loss
    from cxr_tools.models.siamese import similarity
    from cxr_tools.runtime.devices import autocast_context

    rows = pairs.rows()
    net.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            x = torch.from_numpy(images.load(rows[start : start + batch], 0, None)).to(device)
            with autocast_context(device, config.amp):
                chunks.append(net.embed(normalise_input(x, norm_kind)).float().cpu())
    emb = torch.cat(chunks)
    where = {int(r): k for k, r in enumerate(rows)}
    za = emb[[where[int(r)] for r in pairs.left]]
    zb = emb[[where[int(r)] for r in pairs.right]]
    target = torch.from_numpy(pairs.target)
    sims = similarity(za, zb, config.distance).numpy()
    loss = float(contrastive_loss(za, zb, target, margin=config.margin, distance=config.distance))
    auc = roc_auc(pairs.target, sims)
    threshold, accuracy = best_threshold(pairs.target, sims)
    return {
        "val_loss": loss,
        "val_pair_auc": auc,
        "val_accuracy": accuracy,
        "val_threshold": threshold,
        "val_pairs": float(len(pairs)),
    }
