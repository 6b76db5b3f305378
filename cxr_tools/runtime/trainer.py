"""A small epoch/step training loop that every trainer plugs into.

The trainer supplies what is specific to it (:class:`LoopParts`) - ``step_fn(batch)`` returning the loss,
``batches_fn(epoch, start)`` yielding the epoch's batches, ``validate_fn()`` returning metrics - and
:class:`TrainLoop`, run with :class:`LoopOptions`, supplies what users rely on everywhere: AMP, gradient
clipping, DDP-aware gradient sync, LR schedules, ``metrics.jsonl``, ``last.pt`` on a step/time policy and at
every epoch end, ``best.pt`` on the monitored metric, early stopping, progress with the whole run's remaining
time, a once-printed estimate of the run's duration (:mod:`cxr_tools.runtime.estimate`), and preemption
(SIGTERM/SIGUSR1/Ctrl-C -> said at once -> checkpoint at the step's end -> status ``interrupted`` -> optional
SLURM requeue; a second Ctrl-C stops at once).

Resume is bit-identical on CPU: ``last.pt`` holds the model, optimizer, schedule, scaler, every RNG state
(per rank), the loop position (epoch, batch within the epoch), the running epoch sums, early-stopping and
best-metric state, and how many metrics lines were written. Frozen weights the trainer names
(``LoopParts.frozen``) are the exception: the checkpoints record their identity instead, and resume checks it
against the model the trainer rebuilt from their source. For that to hold, ``batches_fn(epoch)`` must
depend only on ``epoch`` and the run's seed (build its sampler from
:func:`~cxr_tools.runtime.seeding.make_generator` ``(seed, epoch)``, never from global RNG); on resume it is
called as ``batches_fn(epoch, k)`` and skips the first ``k`` batches itself (cheaper than loading them).
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError
from cxr_tools.runtime.checkpointing import (
    BestTracker,
    CheckpointPolicy,
    EarlyStopping,
    FrozenWeights,
    load_training_state,
    restore_training_state,
    save_model_state,
    save_training_state,
    unwrap_model,
)
from cxr_tools.runtime.devices import AmpSettings, autocast_context, make_grad_scaler, resolve_amp
from cxr_tools.runtime.distributed import SINGLE, DistInfo, average_gradients, broadcast_object, gather_objects
from cxr_tools.runtime.estimate import Estimate, EstimateSettings, UnitTimer, format_duration
from cxr_tools.runtime.progress import NullProgress, Progress, null_progress
from cxr_tools.runtime.rundir import RunDir
from cxr_tools.runtime.schedules import LRSchedule
from cxr_tools.runtime.seeding import rng_state, set_rng_state
from cxr_tools.runtime.signals import TRAINER_SIGNALS, PreemptionHandler

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`TrainLoop.fit` achieved.

    ``status`` is ``completed`` (all epochs/steps done or stopped early) or ``interrupted`` (a signal; rerun
    to resume). Epoch numbers are 1-based; ``epochs`` counts completed epochs.
    """

    status: str
    epochs: int
    steps: int
    best_metric: float | None
    best_epoch: int | None
    seconds: float
    stopped_early: bool = False
    resumed: bool = False
    signal: str | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopParts:
    """What a trainer supplies to :class:`TrainLoop`: its step, its batches, its validation.

    Attributes:
        step_fn: ``batch -> {"loss": tensor, other: float or tensor...}``; the loop runs it under autocast, then
            does backward, gradient sync, clipping, the optimizer and schedule steps. With ``manual_backward``
            the function fills ``.grad`` itself (e.g. MAML meta-gradients) and ``loss`` may be a float; it is
            called as ``step_fn(batch, backward=fn)`` when it accepts a ``backward`` keyword, and must then
            backpropagate every loss with ``fn(loss)``, which goes through the loop's GradScaler (fp16 AMP: the
            loss is scaled so tiny gradients do not underflow, and ``scaler.step`` unscales exactly what was
            scaled). A manual step without that keyword is refused under fp16 AMP.
        batches_fn: ``(epoch, start) -> iterable of batches``: epoch ``epoch``'s batches (0-based) from batch
            ``start`` on (``start`` > 0 on resume: skipping is the trainer's, which can do it without loading
            them); deterministic given epoch and seed.
        validate_fn: ``() -> {name: float}``, called on every rank after each epoch (rank 0's values are used by
            all ranks). It must switch the model to eval mode itself; the loop switches back.
        manual_backward: see ``step_fn``.
        grad_sync_fn: how gradients are synchronised over ranks (default: averaged for a non-DDP model under a
            process group, :func:`average_gradients`).
        extra_state, load_extra_state: save/restore trainer state (e.g. a stateful sampler) in ``last.pt``.
        frozen: the model's weights that ``last.pt`` / ``best.pt`` name instead of holding (a frozen encoder,
            reloaded from its source when the trainer builds the model); resume refuses other ones.
    """

    step_fn: Callable[..., Mapping[str, Any]]
    batches_fn: Callable[[int, int], Iterable[Any]]
    validate_fn: Callable[[], Mapping[str, float]] | None = None
    manual_backward: bool = False
    grad_sync_fn: Callable[[torch.nn.Module], None] | None = None
    extra_state: Callable[[], Mapping[str, Any]] | None = None
    load_extra_state: Callable[[Mapping[str, Any]], None] | None = None
    frozen: FrozenWeights | None = None


@dataclass(frozen=True)
class LoopOptions:
    """How :class:`TrainLoop` runs the parts.

    Attributes:
        max_epochs, max_steps: stop after whichever comes first (at least one is needed).
        monitor, mode: metric of the epoch record (``val_auc``, ``train_loss``...) that picks ``best.pt``.
        early_stopping: an :class:`EarlyStopping` on ``monitor``.
        checkpoint: when to write ``last.pt`` within epochs (epoch ends and signals always write).
        grad_clip: max global gradient norm (None = no clipping).
        amp: mixed precision, used only on CUDA (a bool or :class:`AmpSettings`).
        log_every_steps: write a ``kind: "step"`` metrics record every N steps (0 = only epoch records).
            Step values stay on the device between records (no host sync per step): they are read at records,
            checkpoints, epoch ends and, for the progress line, at most once a second.
        handle_signals, requeue: install a :class:`PreemptionHandler` (unless one is given), with SLURM requeue.
        estimate: how the run's time is estimated and announced (:mod:`cxr_tools.runtime.estimate`).
    """

    max_epochs: int | None = None
    max_steps: int | None = None
    monitor: str | None = None
    mode: str = "max"
    early_stopping: EarlyStopping | None = None
    checkpoint: CheckpointPolicy | None = None
    grad_clip: float | None = None
    amp: bool | AmpSettings = False
    log_every_steps: int = 50
    handle_signals: bool = True
    requeue: bool = False
    estimate: EstimateSettings = field(default_factory=EstimateSettings)


class _Measured(Exception):
    """Raised from inside a step by :meth:`TrainLoop.measure` once the step's duration is predicted."""


class TrainLoop:
    """Epoch/step loop with checkpointing, resume, preemption, AMP, DDP and time estimates; see the module
    docstring.

    Args:
        run: the run directory (from :func:`~cxr_tools.runtime.rundir.open_run`); None only to :meth:`measure`.
        model: the model, possibly wrapped in DistributedDataParallel.
        optimizer: a torch optimizer.
        parts: the trainer's step, batches and validation (:class:`LoopParts`).
        options: epochs, steps, monitoring, checkpoints, AMP, logging, signals (:class:`LoopOptions`).
        scheduler: an :class:`LRSchedule` from :func:`make_scheduler` (or None).
        progress: where progress goes (default none).
        preemption: a handler to poll; by default the loop installs one (``options.handle_signals``).
        device: where the model is (default CPU); ``dist``: this process's :class:`DistInfo`.
    """

    def __init__(
        self,
        run: RunDir | None,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        parts: LoopParts,
        options: LoopOptions,
        *,
        scheduler: LRSchedule | None = None,
        progress: Progress | None = None,
        preemption: PreemptionHandler | None = None,
        device: torch.device | None = None,
        dist: DistInfo | None = None,
    ) -> None:
        import torch

        if options.max_epochs is None and options.max_steps is None:
            raise ConfigError("Training needs max_epochs or max_steps.")
        if (options.max_epochs is not None and options.max_epochs < 1) or (
            options.max_steps is not None and options.max_steps < 1
        ):
            raise ConfigError("max_epochs and max_steps must be >= 1.")
        if options.early_stopping is not None and options.monitor is None:
            raise ConfigError("Early stopping needs a monitored metric (e.g. --monitor val_auc).")
        self._run = run
        self.model = model
        self.optimizer = optimizer
        self.schedule = scheduler
        self.parts = parts
        self.step_fn = parts.step_fn
        self.batches_fn = parts.batches_fn
        self.validate_fn = parts.validate_fn
        self.max_epochs = options.max_epochs
        self.max_steps = options.max_steps
        self.monitor = options.monitor
        self.best = BestTracker(options.monitor, options.mode) if options.monitor else None
        self.early_stopping = options.early_stopping
        self.policy = options.checkpoint if options.checkpoint is not None else CheckpointPolicy()
        self.dist = dist or SINGLE
        self.progress = null_progress(progress) if self.dist.is_main else NullProgress()
        self.preemption = preemption
        self.handle_signals = options.handle_signals
        self.requeue = options.requeue
        self.grad_clip = options.grad_clip
        self.device = device if device is not None else torch.device("cpu")
        amp = options.amp
        self.amp = amp if isinstance(amp, AmpSettings) else resolve_amp(self.device, amp)
        self.scaler = make_grad_scaler(self.device, self.amp)
        self.manual_backward = parts.manual_backward
        self._passes_backward = parts.manual_backward and _accepts_keyword(parts.step_fn, "backward")
        if parts.manual_backward and self.scaler.is_enabled() and not self._passes_backward:
            raise TypeError(
                "With fp16 AMP a manual-backward step_fn must take a `backward` keyword and backpropagate with it "
                "(the GradScaler has to scale what it later unscales)."
            )
        grad_sync_fn = parts.grad_sync_fn
        if grad_sync_fn is None and self.dist.distributed and not hasattr(model, "module"):
            grad_sync_fn = lambda m: average_gradients(m, self.dist)  # noqa: E731
        self.grad_sync_fn = grad_sync_fn
        self.log_every_steps = options.log_every_steps
        self.extra_state = parts.extra_state
        self.load_extra_state = parts.load_extra_state
        frozen = parts.frozen
        params = unwrap_model(model).named_parameters()
        trained = [n for n, p in params if frozen is not None and frozen.covers(n) and p.requires_grad]
        if trained:  # the checkpoints would lose what they learn
            raise TypeError(f"LoopParts.frozen names weights that train ({trained[0]}); freeze them or leave them out.")
        self.estimate = options.estimate
        # loop position and running state (all saved in last.pt)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.finished = False
        self.stopped_early = False
        self.metrics_lines = 0
        self.epoch_sums: dict[str, Any] = {}  # floats or device tensors (_wide), read only when needed
        self.epoch_count = 0
        self.last_metrics: dict[str, float] = {}
        self.resumed = False
        self._postfix_at = 0.0
        # time (never saved): the run's clock, the once-printed estimate, the step in progress
        self._timer: UnitTimer | None = None
        self._validation_seconds: float | None = None
        self._predicted_step: float | None = None
        self._announced: Estimate | None = None
        self._step_started: float | None = None
        self._saved: tuple[int, float] | None = None
        self._clock_planned = False
        self._epochs_total: int | None = None
        self._measuring = False

    # --- public -------------------------------------------------------------------------------------------
    @property
    def run(self) -> RunDir:
        """The run directory (a loop built without one can only :meth:`measure`)."""
        if self._run is None:
            raise TypeError("This TrainLoop has no run directory: it can only measure().")
        return self._run

    def fit(self) -> TrainResult:
        """Train (resuming from ``last.pt`` when there is one) until done or interrupted."""
        started = time.monotonic()
        handler = self.preemption
        owns_handler = handler is None and self.handle_signals
        if owns_handler:
            handler = PreemptionHandler(TRAINER_SIGNALS, requeue=self.requeue)
        if handler is not None and self.dist.is_main:
            handler.on_signal = self._announce_stop
        try:
            if owns_handler and handler is not None:
                handler.__enter__()
            try:
                self._resume()
                if not self.finished:
                    signal_name = self._train(handler)
                    if signal_name is not None:
                        return self._interrupted(handler, signal_name, started)
                    self.finished = True
                    self._save_last()
                if self.dist.is_main:
                    self.run.set_status("completed", steps=self.step, epochs=self.epoch)
                return self._result("completed", started)
            except KeyboardInterrupt as exc:  # Ctrl-C, or a signal outside the loop (runtime.signals.SignalInterrupt)
                if self.dist.is_main:
                    self.run.set_status("interrupted", signal=str(exc) if hasattr(exc, "signum") else "SIGINT")
                raise
            except BaseException as exc:
                if self.dist.is_main:
                    self.run.set_status("failed", error=f"{type(exc).__name__}: {exc}")
                raise
        finally:
            if handler is not None:
                handler.on_signal = None
            if owns_handler and handler is not None:
                handler.__exit__(None, None, None)

    # --- the loop -----------------------------------------------------------------------------------------
    def _train(self, handler: PreemptionHandler | None) -> str | None:
        """Run epochs; return the name of the signal that stopped training, or None when done."""
        while not self._done():
            self.model.train()
            batches, total = self._batches(self.epoch, self.batch_in_epoch)
            self._start_clock(total)
            label = f"epoch {self.epoch + 1}" + (f"/{self.max_epochs}" if self.max_epochs else "")
            with self.progress.task(label, total=total) as task:
                if self.batch_in_epoch:
                    task.advance(self.batch_in_epoch)
                for batch in batches:
                    if self.max_steps is not None and self.step >= self.max_steps:
                        break
                    values = self._timed_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    self._accumulate(values)
                    task.advance()
                    record = bool(self.log_every_steps) and self.step % self.log_every_steps == 0
                    if record or ("loss" in values and time.monotonic() - self._postfix_at >= 1.0):
                        host = _to_host(values)  # the only host sync between steps
                        self._check_finite(host.get("loss"))
                        if "loss" in host:
                            task.set_postfix(f"loss={host['loss']:.4f}" + self._run_left())
                            self._postfix_at = time.monotonic()
                        if record:
                            self._log(
                                {"kind": "step", "epoch": self.epoch + 1, "step": self.step, "lr": self._lr(), **host}
                            )
                    stop, save = self._agree(_signalled(handler), self.policy.should_save(self.step))
                    if stop or save:
                        self._check_finite(_to_host(self.epoch_sums).get("loss"))  # never checkpoint a NaN model
                        self._save_last()
                    if stop:
                        return _signal_name(handler)
                    if self.max_steps is not None and self.step >= self.max_steps:
                        break
            self._end_epoch()
            if _signalled_any(self, handler):
                return _signal_name(handler)
        return None

    def measure(self, *, steps: int = 3, seconds: float = 20.0) -> Estimate | None:
        """Time the first steps of epoch 0 in memory and estimate the whole run (``--dry-run``).

        Nothing is written (no run directory is needed); the model and optimizer take real steps, so throw them
        away afterwards. Stops after ``steps`` steps, after ``seconds``, or as soon as the estimate's probe
        predicted the first step (a step too long to wait for is cut short). None when the run's length is not
        known before it runs.
        """
        self.model.train()
        batches, total = self._batches(0, 0)
        self._start_clock(total)
        if self._timer is None:
            return None
        self._measuring = True
        try:
            for batch in batches:
                self._timed_step(batch)
                if self._timer.measured >= steps or self._timer.seconds >= seconds:
                    break
        except _Measured:
            return self._estimate(1, self.estimate.probe.unit if self.estimate.probe else "steps")
        finally:
            self._measuring = False
        return self._estimate(self._timer.measured, f"{self.estimate.step_name}s")

    # --- time ---------------------------------------------------------------------------------------------
    def _start_clock(self, epoch_total: int | None) -> None:
        """Plan the run's steps and validations once, when the first epoch's length is known."""
        if self._timer is not None or self._clock_planned:
            return
        self._clock_planned = True
        run_total = self.max_epochs * epoch_total if self.max_epochs is not None and epoch_total else None
        if self.max_steps is not None:
            run_total = self.max_steps if run_total is None else min(run_total, self.max_steps)
        if run_total is None:
            return
        self._timer = UnitTimer(run_total, done=self.step)
        epochs = self.max_epochs
        if epoch_total:
            by_steps = -(-run_total // epoch_total)
            epochs = by_steps if epochs is None else min(epochs, by_steps)
        self._epochs_total = epochs

    def _timed_step(self, batch: Any) -> dict[str, Any]:
        """:meth:`_train_step`, timed; the first step runs under the estimate's probe when there is one."""
        began = time.monotonic()
        self._step_started = began
        timer = self._timer
        probe = self.estimate.probe if timer is not None and timer.measured == 0 and self.dist.is_main else None
        if probe is not None:
            probe.start(self._predicted)
        try:
            values = self._train_step(batch)
            if timer is not None and self._announced is None and self.device.type == "cuda":
                import torch

                torch.cuda.synchronize(self.device)  # until estimated, time the step's kernels, not their launch
        finally:
            if probe is not None:
                probe.stop()
            self._step_started = None
        if timer is not None:
            timer.add(time.monotonic() - began)
            if not self._measuring and self.dist.is_main:
                self._after_step()
        return values

    def _predicted(self, seconds: float, measured: int) -> None:
        """The probe's prediction of the first step: announce the run's estimate at once (or end a measure)."""
        self._predicted_step = seconds
        if self._measuring:
            raise _Measured
        unit = self.estimate.probe.unit if self.estimate.probe is not None else "steps"
        self._announce(self._estimate(measured, unit))

    def _after_step(self) -> None:
        """Announce the estimate once enough steps are measured; correct a probe's prediction once when the first
        whole step says it was off by more than half."""
        timer = self._timer
        assert timer is not None
        if self._announced is None:
            if (timer.measured >= 3 and timer.seconds >= 2.0) or timer.seconds >= 10.0:
                self._announce(self._estimate(timer.measured, f"{self.estimate.step_name}s"))
            return
        if timer.measured == 1 and self._predicted_step:
            ratio = timer.seconds / self._predicted_step
            if ratio > 1.5 or ratio < 1 / 1.5:
                estimate = self._estimate(1, f"{self.estimate.step_name}s")
                if estimate is not None:
                    log.info(
                        "The first %s took %s, not the predicted %s: %s.",
                        self.estimate.step_name,
                        format_duration(timer.seconds),
                        format_duration(self._predicted_step),
                        estimate.message(),
                    )

    def _announce(self, estimate: Estimate | None) -> None:
        if estimate is not None and self._announced is None:
            self._announced = estimate
            estimate.log()

    def _estimate(self, measured: int, unit: str) -> Estimate | None:
        left = self._seconds_left()
        if left is None:
            return None
        return Estimate(left, measured, unit, str(self.device), self.estimate.hint, remaining=self.resumed)

    def _step_seconds(self) -> float | None:
        """Measured seconds per step (else the probe's prediction, else None)."""
        per = self._timer.per_unit() if self._timer is not None else None
        return per if per is not None else self._predicted_step

    def _seconds_left(self) -> float | None:
        """The whole run's remaining seconds: its steps and validations."""
        per = self._step_seconds()
        if per is None or self._timer is None:
            return None
        validations = 0
        if self.validate_fn is not None and self._epochs_total is not None:
            validations = max(0, self._epochs_total - self.epoch)
        one = self._validation_seconds if self._validation_seconds is not None else self.estimate.validation_steps * per
        return max(0, self._timer.total - self.step) * per + validations * one

    def _run_left(self) -> str:
        """The progress postfix's whole-run ETA (empty until one step is measured)."""
        left = self._seconds_left() if self._timer is not None and self._timer.measured else None
        return "" if left is None else f", run ~{format_duration(left)} left"

    def _announce_stop(self, signum: int) -> None:
        """Say at once what the first stop signal does: the step ends, last.pt is saved (and what Ctrl-C again does)."""
        step = self.estimate.step_name
        now = time.monotonic()
        started = self._step_started
        if started is None:
            what = f"at the next {step} boundary"
        else:
            expected = self._step_seconds()
            if expected is None:
                what = f"after the current {step} (its duration is not measured yet)"
            elif expected - (now - started) > 0:
                what = f"after the current {step} (about {format_duration(expected - (now - started))} left of it)"
            else:
                what = f"after the current {step} (it is taking longer than the {format_duration(expected)} expected)"
        if signum != signal.SIGINT:
            log.warning("%s: stopping %s, then saving last.pt.", signal.Signals(signum).name, what)
            return
        if self._saved is not None:
            at, when = self._saved
            resume = f"a rerun then resumes from {step} {at}, saved {format_duration(now - when)} ago"
        else:
            resume = "nothing is saved yet, so a rerun then starts over"
        log.warning(
            "Ctrl-C: stopping %s, then saving last.pt; rerun the same command to resume. "
            "Press Ctrl-C again to stop at once (%s).",
            what,
            resume,
        )

    def _done(self) -> bool:
        if self.stopped_early:
            return True
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            return True
        return self.max_steps is not None and self.step >= self.max_steps and self.batch_in_epoch == 0

    def _batches(self, epoch: int, start: int) -> tuple[Iterable[Any], int | None]:
        """The epoch's batches from batch ``start`` on, and the epoch's total number of batches if known."""
        rest = self.batches_fn(epoch, start)
        remaining = _length(rest)
        return rest, None if remaining is None else remaining + start

    def _train_step(self, batch: Any) -> dict[str, Any]:
        """One optimizer step; the step's values as floats or detached device tensors (not read here)."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp):
            out = dict(self.step_fn(batch, backward=self._backward) if self._passes_backward else self.step_fn(batch))
        loss = out.get("loss")
        if not self.manual_backward:
            if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                raise TypeError("step_fn must return {'loss': tensor requiring grad} (or use manual_backward=True)")
            self.scaler.scale(loss).backward()
        if self.grad_sync_fn is not None:
            self.grad_sync_fn(self.model)
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(unwrap_model(self.model).parameters(), self.grad_clip)
            out["grad_norm"] = norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule is not None:
            self.schedule.step_batch()
        return {k: _wide(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}

    def _backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` through the GradScaler (a pass-through unless fp16 AMP): what a manual step
        calls, so ``scaler.step`` later unscales exactly the factor the gradients carry."""
        self.scaler.scale(loss).backward()

    def _check_finite(self, loss: float | None) -> None:
        """Stop a diverged run (a NaN/inf loss or loss sum). Under fp16 AMP an overflowing step is the scaler's
        business (it skips the step and lowers the scale), so nothing is raised there."""
        if loss is not None and not math.isfinite(loss) and not self.amp.needs_scaler:
            raise ConfigError(
                f"Training diverged: the loss is {loss} at or before step {self.step}.",
                "Lower the learning rate or set a gradient clip.",
            )

    def _accumulate(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.epoch_sums[key] = self.epoch_sums.get(key, 0.0) + value  # on the device for tensors
        self.epoch_count += 1

    def _end_epoch(self) -> None:
        self._check_finite(_to_host(self.epoch_sums).get("loss"))
        record: dict[str, Any] = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.step, "lr": self._lr()}
        record.update({f"train_{k}": v for k, v in self._epoch_means().items()})
        began = time.monotonic()
        val = self._validate()
        if self.validate_fn is not None:
            self._validation_seconds = time.monotonic() - began
        record.update(val)
        self.last_metrics = {k: v for k, v in record.items() if k not in {"kind", "epoch", "step"}}
        value = None
        if self.monitor is not None:
            if self.monitor not in record:
                raise ConfigError(
                    f"The monitored metric '{self.monitor}' was not reported.",
                    f"Reported: {', '.join(sorted(k for k in record if k != 'kind'))}.",
                )
            value = float(record[self.monitor])
        if self.schedule is not None:
            self.schedule.step_epoch(record)
        if (
            self.best is not None
            and value is not None
            and self.best.update(value, epoch=self.epoch + 1, step=self.step)
        ):
            record["best"] = True
            if self.dist.is_main:
                save_model_state(
                    self.run.best_checkpoint,
                    self.model,
                    step=self.step,
                    epoch=self.epoch + 1,
                    extra={"monitor": self.monitor, "value": value, "mode": self.best.mode},
                    frozen=self.parts.frozen,
                )
        if self.early_stopping is not None and value is not None and self.early_stopping.step(value):
            self.stopped_early = True
            record["stopped_early"] = True
        self._log(record)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums, self.epoch_count = {}, 0
        self._save_last()

    def _epoch_means(self) -> dict[str, float]:
        import torch

        if not self.epoch_count:
            return {}
        sums = _to_host(self.epoch_sums)
        keys = sorted(sums)
        means = torch.tensor([sums[k] / self.epoch_count for k in keys], dtype=torch.float64)
        if self.dist.distributed:
            from cxr_tools.runtime.distributed import all_reduce_mean

            all_reduce_mean(means, self.dist)
        return dict(zip(keys, means.tolist(), strict=True))

    def _validate(self) -> dict[str, float]:
        if self.validate_fn is None:
            return {}
        metrics = {k: float(v) for k, v in dict(self.validate_fn()).items()}
        self.model.train()
        return dict(broadcast_object(metrics, self.dist))

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log(self, record: Mapping[str, Any]) -> None:
        if self.dist.is_main:
            self.run.log_metrics(record)
        self.metrics_lines += 1

    def _agree(self, stop: bool, save: bool) -> tuple[bool, bool]:
        """Every rank must take the same checkpoint/stop decision (collectives inside a save)."""
        if not self.dist.distributed:
            return stop, save
        import torch
        import torch.distributed as tdist

        flags = torch.tensor([float(stop), float(save)])
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def _loop_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "step": self.step,
            "finished": self.finished,
            "stopped_early": self.stopped_early,
            "metrics_lines": self.metrics_lines,
            "epoch_sums": _to_host(self.epoch_sums),
            "epoch_count": self.epoch_count,
            "last_metrics": dict(self.last_metrics),
        }

    def _save_last(self) -> None:
        ranks_rng = gather_objects(rng_state(), self.dist) if self.dist.distributed else None
        if self.dist.is_main:
            extra: dict[str, Any] = {
                "loop": self._loop_state(),
                "best": self.best.state_dict() if self.best is not None else None,
                "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
                "world_size": self.dist.world_size,
                "user": dict(self.extra_state()) if self.extra_state is not None else None,
            }
            if ranks_rng is not None:
                extra["rng_per_rank"] = ranks_rng
            save_training_state(
                self.run.last_checkpoint,
                self.model,
                self.optimizer,
                self.schedule,
                self.scaler,
                self.step,
                self.epoch,
                extra,
                frozen=self.parts.frozen,
            )
        self.policy.mark_saved(self.step)
        self._saved = (self.step, time.monotonic())

    def _resume(self) -> None:
        path = self.run.last_checkpoint
        if not path.is_file():
            if self.dist.is_main:
                self.run.truncate_metrics(keep=0)  # records of a session killed before its first checkpoint
            return
        state = load_training_state(path)
        restore_training_state(
            state,
            self.model,
            self.optimizer,
            self.schedule,
            self.scaler,
            restore_rng=False,
            frozen=self.parts.frozen,
            source=str(path),
        )
        extra = state.get("extra") or {}
        per_rank = extra.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        else:
            if self.dist.world_size != int(extra.get("world_size", 1)):
                log.warning(
                    "Resuming with %d ranks a run saved with %s; results will not be bit-identical.",
                    self.dist.world_size,
                    extra.get("world_size"),
                )
            set_rng_state(state["rng"])
        loop = extra["loop"]
        self.epoch, self.batch_in_epoch, self.step = int(loop["epoch"]), int(loop["batch"]), int(loop["step"])
        self.finished, self.stopped_early = bool(loop["finished"]), bool(loop["stopped_early"])
        self.metrics_lines = int(loop["metrics_lines"])
        self.epoch_sums = {k: float(v) for k, v in loop["epoch_sums"].items()}
        self.epoch_count = int(loop["epoch_count"])
        self.last_metrics = dict(loop.get("last_metrics") or {})
        if self.best is not None and extra.get("best") is not None:
            self.best.load_state_dict(extra["best"])
        if self.early_stopping is not None and extra.get("early_stopping") is not None:
            self.early_stopping.load_state_dict(extra["early_stopping"])
        if self.load_extra_state is not None and extra.get("user") is not None:
            self.load_extra_state(extra["user"])
        if self.dist.is_main:
            self.run.truncate_metrics(keep=self.metrics_lines)
        self.policy.mark_saved(self.step)
        self._saved = (self.step, time.monotonic())
        self.resumed = True
        log.info(
            "Resumed %s at epoch %d, batch %d (step %d).", self.run.path, self.epoch + 1, self.batch_in_epoch, self.step
        )

    def _interrupted(self, handler: PreemptionHandler | None, signal_name: str, started: float) -> TrainResult:
        if self.dist.is_main:
            self.run.set_status("interrupted", signal=signal_name, steps=self.step, epochs=self.epoch)
            if handler is not None:
                handler.requeue_job()
        log.warning(
            "Stopped by %s at step %d; last.pt is saved, rerun the same command to resume.", signal_name, self.step
        )
        return self._result("interrupted", started, signal_name)

    def _result(self, status: str, started: float, signal_name: str | None = None) -> TrainResult:
        return TrainResult(
            status=status,
            epochs=self.epoch,
            steps=self.step,
            best_metric=self.best.best if self.best is not None else None,
            best_epoch=self.best.best_epoch if self.best is not None else None,
            seconds=time.monotonic() - started,
            stopped_early=self.stopped_early,
            resumed=self.resumed,
            signal=signal_name,
            last_metrics=dict(self.last_metrics),
        )


def _wide(value: torch.Tensor) -> torch.Tensor:
    """``value`` in float64 (what Python floats sum in), float32 on MPS (which has no float64)."""
    import torch

    return value.to(torch.float32 if value.device.type == "mps" else torch.float64)


def _to_host(values: Mapping[str, Any]) -> dict[str, float]:
    """``values`` as Python floats: one device-to-host copy for all the tensors among them."""
    import torch

    tensors = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in values.items() if k not in tensors}
    if tensors:
        device = values[tensors[0]].device
        flat = torch.stack([_wide(values[k].reshape(()).to(device)) for k in tensors]).cpu().tolist()
        out.update(zip(tensors, flat, strict=True))
    return out


def _signalled(handler: PreemptionHandler | None) -> bool:
    return handler is not None and handler.should_stop


def _signalled_any(loop: TrainLoop, handler: PreemptionHandler | None) -> bool:
    stop, _ = loop._agree(_signalled(handler), False)
    if stop and handler is not None and not handler.should_stop:
        handler.request_stop()
    return stop


def _signal_name(handler: PreemptionHandler | None) -> str:
    return (handler.signal_name if handler is not None else None) or "SIGTERM"


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _length(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
