"""The options every training command shares, declared once.

:class:`RunOptions` is how a run is executed (device, seeds, run directory, checkpoints, logs): ``cxr train``,
``cxr train-siamese`` and ``cxr meta-train`` all inherit it, so each concept has one field name (and one flag,
see docs/design.md). :class:`TrainingOptions` adds the epoch/optimiser options of the two epoch-based trainers.
Both are keyword-only so each command's own fields (``cache``, ``output``, ...) come first in its constructor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxr_tools.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How a training run is executed.

    Attributes:
        device, threads, amp: ``--device``, CPU threads (None = library default), mixed precision on CUDA.
        seed: seeds Python, NumPy and torch, and every sampler of the run.
        resume, overwrite, requeue: run-directory handling and SLURM requeue on preemption.
        checkpoint_every_steps, checkpoint_every_minutes: ``last.pt`` policy between epochs (None = off).
        log_every_steps: a ``step`` record in metrics.jsonl every N steps (0 = epochs only).
    """

    device: str = "auto"
    threads: int | None = None
    amp: bool = False
    seed: int = 0
    resume: bool = True
    overwrite: bool = False
    requeue: bool = False
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    log_every_steps: int = 50


@dataclass(frozen=True, kw_only=True)
class TrainingOptions(RunOptions):
    """Options shared by ``cxr train`` and ``cxr train-siamese``: training length, optimiser, data.

    Attributes:
        epochs, max_steps: training length (max_steps, when set, stops earlier).
        batch_size: global batch size (split over ranks under torchrun).
        lr, weight_decay, optimizer, momentum: optimiser (``adamw`` or ``sgd``).
        schedule, warmup_steps: LR schedule (none, cosine, step, plateau, onecycle) and linear warmup.
        patience: early stopping on the monitored validation metric after this many epochs without
            improvement (None = off).
        augment: light anatomical augmentation of training images.
        val_batch_size: validation batch (None = 2 x batch_size).
        workers: data-loading processes.
        pool_seed: seed of the meta-split pools for ``classes=("base",)`` (the meta-train pool MAML uses with
            the same seed; recorded in the model's lineage).
        Device, seed, run directory and checkpoints: :class:`RunOptions`.
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
    pool_seed: int = 0


def check_training_options(options: TrainingOptions) -> None:
    """Refuse impossible training options before any work (batch size, epochs, learning rate, optimiser)."""
    if options.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {options.batch_size}).")
    if options.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (got {options.epochs}).")
    if options.max_steps is not None and options.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1 (got {options.max_steps}).")
    if not (options.lr > 0 and math.isfinite(options.lr)):
        raise ConfigError(f"--lr must be a positive number (got {options.lr}).")
    if options.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0 (got {options.weight_decay}).")
    if options.optimizer not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer '{options.optimizer}'.", f"Use one of: {', '.join(OPTIMIZERS)}.")
    if options.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (got {options.workers}).")
