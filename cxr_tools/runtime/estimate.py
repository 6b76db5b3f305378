"""Honest time: how long a whole run will take, measured on its first units of work and said before it is late.

A long command measures its first steps (or, when one step is itself long, the first pieces of it), extrapolates
to the whole run and says so once: ``estimated 16 days on cpu at this size (from 2 measured inner steps)``, with a
quicker command to try when the answer is long. Progress lines then carry the whole run's remaining time, not
only the epoch's. Everything here is arithmetic on wall-clock seconds; torch is touched only by
:class:`ForwardClock`, which times a model's forward calls through a hook and never changes what it computes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Estimates at least this long are logged as warnings (visible with ``--quiet``) and carry the quick-try hint.
LONG_SECONDS = 3600.0


def format_duration(seconds: float) -> str:
    """``seconds`` in the two largest units that matter: ``16 days``, ``2 days 5 h``, ``3 h 12 min``, ``4 min``,
    ``40 s``. Rounded to what a person plans with, not to the second."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        minutes, rest = divmod(round(s), 60)
        return f"{minutes} min" + (f" {rest} s" if minutes < 10 and rest else "")
    if s < 86400:
        hours, minutes = divmod(round(s / 60), 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(round(s / 3600), 24)
    if days >= 10:
        return f"{round(s / 86400)} days"
    return f"{days} day{'s' if days > 1 else ''}" + (f" {hours} h" if hours else "")


@dataclass(frozen=True)
class Estimate:
    """An extrapolated run time.

    Attributes:
        seconds: the whole run (what is left of it on a resumed run).
        measured: how many units the extrapolation rests on, and ``unit`` what they are (``steps``, ``inner
            steps``, ``episodes``).
        device: where it runs (``cpu``, ``cuda:0``).
        hint: a quicker command to try, shown when the estimate is long.
        remaining: True when ``seconds`` is what is left of a resumed run.
    """

    seconds: float
    measured: int
    unit: str
    device: str
    hint: str = ""
    remaining: bool = False

    def message(self) -> str:
        """The one line a user reads: the estimate, what it rests on and, when long, a quicker try."""
        what = "remaining" if self.remaining else "estimated"
        unit = self.unit if self.measured != 1 else self.unit.removesuffix("s")
        text = (
            f"{what} {format_duration(self.seconds)} on {self.device} at this size "
            f"(an estimate from {self.measured} measured {unit})"
        )
        if self.hint and self.seconds >= LONG_SECONDS:
            text += f"; for a quick try: {self.hint}"
        return text

    def log(self) -> None:
        """Log :meth:`message`: a warning when long (shown even with ``--quiet``), else info."""
        log.log(logging.WARNING if self.seconds >= LONG_SECONDS else logging.INFO, "%s", self.message())


@dataclass(frozen=True)
class RunPlan:
    """What ``--dry-run`` prints instead of running: the plan, in order, and the estimate.

    Attributes:
        command: ``train``, ``meta-train``...
        output: the folder the run would write (nothing is written by a dry run).
        device: where it would run.
        plan: ``(what, value)`` rows: data, model, steps or episodes...
        estimate: the extrapolated duration (None when nothing could be timed).
    """

    command: str
    output: Path | None
    device: str
    plan: tuple[tuple[str, str], ...]
    estimate: Estimate | None


def quick_try(command: str, flags: str, side: int) -> str:
    """A quicker command in the README's laptop settings (a 64 px cache, conv4, small budgets)."""
    text = f"cxr {command} {flags}"
    if side > 64:
        text += " on a 64 px cache (cxr preprocess --size 64)"
    return text + ", the README's laptop settings"


@dataclass(frozen=True)
class EstimateSettings:
    """What a trainer tells its loop so the loop can estimate the run (:class:`~cxr_tools.runtime.trainer.TrainLoop`).

    Attributes:
        step_name: what one step is called in messages (``step``, ``meta-step``).
        hint: a quicker command (see :class:`Estimate`).
        validation_steps: one validation's cost in training steps: the model used until one is measured.
        probe: a :class:`ForwardClock` (or anything with its ``start``/``stop``) that predicts the first step's
            duration from pieces of it, for steps too long to wait for.
    """

    step_name: str = "step"
    hint: str = ""
    validation_steps: float = 0.0
    probe: ForwardClock | None = None


class ForwardClock:
    """Predicts a long step's duration from the first forward calls of a model inside it.

    A MAML meta-step calls the model once per inner step and once on the queries, then backpropagates through
    everything; on a CPU at 256 px one meta-step takes minutes. The clock times the interval between two forward
    calls of the first task's inner loop (one inner step: forward and gradient; the first interval, which pays
    for warm-up, is skipped) and multiplies it by ``units_per_step``, the step's cost in inner steps that the
    trainer models (:func:`maml_step_units`). It calls
    ``on_prediction(seconds, measured_units)`` once, from inside the step, and removes its hook.
    """

    unit = "inner steps"

    def __init__(self, model: Any, units_per_step: float, *, skip: int = 1) -> None:
        self.model = model
        self.units_per_step = float(units_per_step)
        self.skip = skip
        self._stamps: list[float] = []
        self._handle: Any = None
        self._cuda = False
        self._on_prediction: Callable[[float, int], None] | None = None

    def start(self, on_prediction: Callable[[float, int], None]) -> None:
        """Hook the model for the next step; ``on_prediction`` receives the predicted step seconds."""
        self._on_prediction = on_prediction
        self._stamps.clear()
        self._cuda = any(p.is_cuda for p in self.model.parameters())
        self._handle = self.model.register_forward_pre_hook(self._tick)

    def stop(self) -> None:
        """Remove the hook (at the end of the step, whether or not a prediction was made)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _tick(self, module: Any, args: Any) -> None:
        if self._cuda:  # kernels run asynchronously: time what they did, not when they were queued
            import torch

            torch.cuda.synchronize()
        self._stamps.append(time.monotonic())
        needed = self.skip + 2  # the skipped warm-up interval(s), then one measured inner step
        if len(self._stamps) == needed and self._on_prediction is not None:
            unit = self._stamps[-1] - self._stamps[-2]
            callback, self._on_prediction = self._on_prediction, None
            self.stop()
            callback(unit * self.units_per_step, 1)


def maml_step_units(adapt_steps: int, meta_batch: int, first_order: bool) -> float:
    """A MAML meta-step's cost in inner steps (forward and gradient on a support set), measured on 2 CPU cores
    with conv4 and ResNet-18 at 64 and 128 px (``benchmarks/estimate.py``, docs/benchmarks.md): per task the
    ``K`` inner steps, then the query forward and the backward through the adapted weights, which costs about
    2 K + 1 inner steps more for second order and about 2.3 for first order."""
    k = max(1, adapt_steps)
    per_task = (3.0 * k + 1.0) if not first_order else (k + 2.3)
    return per_task * meta_batch


def maml_validation_units(adapt_steps: int, episodes: int) -> float:
    """One meta-validation's cost in inner steps: per episode ``K`` graph-free inner steps and three forwards."""
    return (max(0, adapt_steps) + 1.2) * episodes


def maml_estimate(
    model: Any, adapt_steps: int, tasks: int, first_order: bool, val_episodes: int, hint: str
) -> EstimateSettings:
    """The estimate settings of a MAML meta-training loop: meta-steps, their modelled validation cost and, with
    two inner steps or more (one interval to skip, one to measure), a :class:`ForwardClock` on ``model``."""
    units = maml_step_units(adapt_steps, max(1, tasks), first_order)
    probe = ForwardClock(model, units) if adapt_steps >= 2 else None
    return EstimateSettings("meta-step", hint, maml_validation_units(adapt_steps, val_episodes) / units, probe)


class UnitTimer:
    """Rate of a loop's units of work (steps, episodes), ignoring those a resumed run skipped and the first one
    (warm-up) once three have been measured: what the once-printed :class:`Estimate` and the whole-run ETAs of
    progress lines are extrapolated from."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self.done = done
        self.measured = 0
        self.seconds = 0.0
        self.first = 0.0

    def add(self, seconds: float, n: int = 1) -> None:
        """``n`` more units done, taking ``seconds`` in all."""
        if self.measured == 0:
            self.first = seconds / max(1, n)
        self.measured += n
        self.seconds += seconds
        self.done += n

    def per_unit(self) -> float | None:
        """Seconds per unit (the first unit left out once three are measured), None before any."""
        if self.measured == 0:
            return None
        if self.measured >= 3:
            return (self.seconds - self.first) / (self.measured - 1)
        return self.seconds / self.measured


class EstimatingProgress:
    """A :class:`~cxr_tools.runtime.progress.Progress` that passes everything on and, on the task called ``task``,
    times its units (the first ``skip`` ones, e.g. episodes a resumed run reads back from its journal, are not
    work) and hands ``on_estimate`` one :class:`Estimate` once three units took 2 s or one took 10 s.

    ``cxr evaluate`` logs it; ``--dry-run`` raises from ``on_estimate`` to stop after measuring.
    """

    def __init__(
        self,
        inner: Any,
        task: str,
        device: str,
        on_estimate: Callable[[Estimate], None],
        *,
        hint: str = "",
        skip: int = 0,
        unit: str = "episodes",
    ) -> None:
        self.inner = inner
        self.name = task
        self.device = device
        self.on_estimate: Callable[[Estimate], None] | None = on_estimate
        self.hint = hint
        self.skip = skip
        self.unit = unit

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        with self.inner.task(description, total) as inner:
            if description != self.name or not total:
                yield inner
                return
            yield _EstimatingTask(self, inner, int(total))


class _EstimatingTask:
    def __init__(self, owner: EstimatingProgress, inner: Any, total: int) -> None:
        self.owner, self.inner = owner, inner
        self.timer = UnitTimer(total)
        self.seen = 0
        self.last = time.monotonic()

    def advance(self, n: float = 1) -> None:
        self.inner.advance(n)
        now = time.monotonic()
        self.seen += int(n)
        if self.seen <= self.owner.skip:
            self.timer.done = self.seen  # read back, not measured
        else:
            self.timer.add(now - self.last, int(n))
        self.last = now
        timer, owner = self.timer, self.owner
        if owner.on_estimate is None or not (
            (timer.measured >= 3 and timer.seconds >= 2.0) or (timer.measured and timer.seconds >= 10.0)
        ):
            return
        rate = timer.per_unit() or 0.0
        callback, owner.on_estimate = owner.on_estimate, None
        remaining = owner.skip > 0
        left = max(0, timer.total - timer.done) * rate
        callback(Estimate(left, timer.measured, owner.unit, owner.device, owner.hint, remaining=remaining))

    def set_total(self, total: float | None) -> None:
        self.inner.set_total(total)

    def set_postfix(self, text: str) -> None:
        self.inner.set_postfix(text)
