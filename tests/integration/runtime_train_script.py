"""A tiny real training run on the shared runtime, used by the runtime tests in-process and as a subprocess.

``python runtime_train_script.py RUN --epochs 2 [--sleep 0.05] [--ready FILE --ready-step K] [--requeue]``
trains a small dropout MLP on random tensors with :class:`TrainLoop` and prints the result as JSON. The
data order of each epoch depends only on (seed, epoch), so an interrupted and resumed run must end with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cxr_tools.runtime.checkpointing import CheckpointPolicy, EarlyStopping
from cxr_tools.runtime.devices import set_threads
from cxr_tools.runtime.rundir import open_run
from cxr_tools.runtime.schedules import make_scheduler
from cxr_tools.runtime.seeding import make_generator, seed_everything
from cxr_tools.runtime.trainer import LoopOptions, LoopParts, TrainLoop, TrainResult

N_TRAIN, N_VAL, DIM, BATCH = 48, 16, 8, 8


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    epochs: int = 2
    seed: int = 7
    lr: float = 0.01
    schedule: str = "cosine"
    patience: int | None = None
    every_steps: int | None = None
    requeue: bool = False


def make_data(seed: int) -> tuple[torch.Tensor, ...]:
    gen = make_generator(seed, 999)
    x = torch.randn(N_TRAIN + N_VAL, DIM, generator=gen)
    w = torch.randn(DIM, 1, generator=gen)
    y = (x @ w + 0.3 * torch.randn(N_TRAIN + N_VAL, 1, generator=gen) > 0).float()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def train(
    run_path: Path,
    cfg: TinyConfig,
    *,
    sleep: float = 0.0,
    on_step: Any = None,
    on_validate: Any = None,
    val_sequence: list[float] | None = None,
    overwrite: bool = False,
) -> tuple[TrainResult, torch.nn.Module]:
    """Build everything from the seed and fit.

    ``on_step(n)`` runs inside the n-th step of this session and ``on_validate(n)`` inside its n-th validation
    (tests send signals or raise there).
    """
    set_threads(1)
    seed_everything(cfg.seed)
    x, y, xv, yv = make_data(cfg.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = N_TRAIN // BATCH
    schedule = make_scheduler(cfg.schedule, optimizer, total_steps=cfg.epochs * steps_per_epoch, warmup_steps=2)
    run = open_run(run_path, "test-tiny", cfg, overwrite=overwrite, device="cpu")
    calls = {"n": 0, "val": 0}

    def batches_fn(epoch: int, start: int):
        order = torch.randperm(N_TRAIN, generator=make_generator(cfg.seed, epoch))
        return [(x[order[i : i + BATCH]], y[order[i : i + BATCH]]) for i in range(0, N_TRAIN, BATCH)][start:]

    def step_fn(batch):
        calls["n"] += 1
        if on_step is not None:
            on_step(calls["n"])
        if sleep:
            time.sleep(sleep)
        xb, yb = batch
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
        return {"loss": loss}

    def validate_fn():
        calls["val"] += 1
        if on_validate is not None:
            on_validate(calls["val"])
        model.eval()
        with torch.no_grad():
            val_loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xv), yv).item()
        if val_sequence is not None:  # scripted metric, to test early stopping deterministically
            epoch = len([r for r in run.read_metrics() if r.get("kind") == "epoch"])
            return {"val_loss": val_loss, "val_score": val_sequence[epoch]}
        return {"val_loss": val_loss}

    monitor, mode = ("val_score", "max") if val_sequence is not None else ("val_loss", "min")
    options = LoopOptions(
        max_epochs=cfg.epochs,
        monitor=monitor,
        mode=mode,
        early_stopping=EarlyStopping(cfg.patience, mode=mode) if cfg.patience else None,
        checkpoint=CheckpointPolicy(every_steps=cfg.every_steps, every_minutes=None),
        requeue=cfg.requeue,
        log_every_steps=1,
    )
    loop = TrainLoop(run, model, optimizer, LoopParts(step_fn, batches_fn, validate_fn), options, scheduler=schedule)
    return loop.fit(), model


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-for-bit equality of two state dicts."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--ready", type=Path, default=None)
    parser.add_argument("--ready-step", type=int, default=3)
    parser.add_argument("--requeue", action="store_true")
    args = parser.parse_args(argv)

    def on_step(n: int) -> None:
        if args.ready is not None and n == args.ready_step:
            args.ready.write_text("ready")

    result, _ = train(args.run, TinyConfig(epochs=args.epochs, requeue=args.requeue), sleep=args.sleep, on_step=on_step)
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
