"""Learning-rate schedules with optional linear warmup, stepped by the training loop.

``none``, ``cosine``, ``step`` and ``onecycle`` advance once per optimizer step (their lengths are in steps,
so they mean the same thing whatever the epoch size); ``plateau`` advances once per validation with the
monitored metric. Step-based schedules are a :class:`torch.optim.lr_scheduler.LambdaLR` over a closure,
whose state dict is just counters - checkpoints stay ``weights_only``-loadable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cxr_tools.errors import ConfigError

SCHEDULES = ("none", "cosine", "step", "plateau", "onecycle")


class LRSchedule:
    """A torch scheduler plus when to step it: ``interval`` "step" (per batch) or "epoch" (per validation)."""

    def __init__(self, name: str, scheduler: Any | None, interval: str, monitor: str | None = None) -> None:
        self.name = name
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def step_epoch(self, metrics: Mapping[str, float]) -> None:
        """Call after every validation; ``plateau`` reads its monitored metric from ``metrics``."""
        if self.scheduler is None or self.interval != "epoch":
            return
        if self.monitor is not None:
            if self.monitor not in metrics:
                raise ConfigError(
                    f"The plateau schedule monitors '{self.monitor}', which validation did not report.",
                    f"Reported: {', '.join(sorted(metrics)) or 'nothing'}.",
                )
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ConfigError(
                f"The checkpoint used the '{state.get('name')}' LR schedule, not '{self.name}'.",
                "Resume with the original options or pass --overwrite.",
            )
        if self.scheduler is not None and state.get("state") is not None:
            self.scheduler.load_state_dict(state["state"])


def make_scheduler(
    name: str,
    optimizer: Any,
    *,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.1,
    monitor: str = "val_loss",
    mode: str = "min",
    patience: int = 5,
    factor: float = 0.1,
    max_lr: float | None = None,
    pct_start: float = 0.3,
) -> LRSchedule:
    """Build schedule ``name`` for ``optimizer``.

    Args:
        total_steps: optimizer steps of the whole run (cosine, onecycle).
        warmup_steps: linear warmup from ~0 to the base LR (none, cosine, step).
        min_lr_ratio: cosine floor as a fraction of the base LR.
        step_size, gamma: ``step`` multiplies the LR by ``gamma`` every ``step_size`` steps.
        monitor, mode, patience, factor: ``plateau`` (ReduceLROnPlateau on a validation metric).
        max_lr, pct_start: ``onecycle`` (default max_lr = the optimizer's LR).
    """
    import torch

    if name not in SCHEDULES:
        raise ConfigError(f"Unknown LR schedule '{name}'.", f"Use one of: {', '.join(SCHEDULES)}.")
    if warmup_steps < 0:
        raise ConfigError("warmup_steps must be >= 0.")
    warm = int(warmup_steps)

    def warmup(step: int) -> float:
        return (step + 1) / (warm + 1) if step < warm else 1.0

    if name == "none":
        if warm == 0:
            return LRSchedule(name, None, "step")
        return LRSchedule(name, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup), "step")
    if name == "cosine":
        if not total_steps or total_steps <= warm:
            raise ConfigError("The cosine schedule needs total_steps greater than warmup_steps.")

        def cosine(step: int) -> float:
            if step < warm:
                return warmup(step)
            progress = min(1.0, (step - warm) / (total_steps - warm))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return LRSchedule(name, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine), "step")
    if name == "step":
        if not step_size or step_size < 1:
            raise ConfigError("The step schedule needs step_size >= 1 (optimizer steps between LR drops).")

        def stepped(step: int) -> float:
            return warmup(step) * gamma ** ((max(0, step - warm)) // step_size)

        return LRSchedule(name, torch.optim.lr_scheduler.LambdaLR(optimizer, stepped), "step")
    if name == "plateau":
        if warm:
            raise ConfigError("Warmup is not supported with the plateau schedule.", "Use cosine or step with warmup.")
        if mode not in {"min", "max"}:
            raise ConfigError(f"Unknown plateau mode '{mode}'.", "Use min or max.")
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min" if mode == "min" else "max", factor=factor, patience=patience
        )
        return LRSchedule(name, plateau, "epoch", monitor=monitor)
    # onecycle: its own warmup (pct_start) replaces warmup_steps
    if not total_steps:
        raise ConfigError("The onecycle schedule needs total_steps.")
    peak = max_lr if max_lr is not None else optimizer.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps, pct_start=pct_start)
    return LRSchedule(name, sched, "step")
