"""Preemption: turn SIGTERM / SIGUSR1 into "checkpoint at the next step boundary and exit cleanly".

SLURM sends SIGTERM when a job hits its time limit or is preempted (``KillWait`` seconds before SIGKILL),
and ``#SBATCH --signal=B:USR1@120`` asks for SIGUSR1 two minutes before the end. The handler only records
the signal - raising inside a signal handler could tear a half-written checkpoint or optimizer step - and
the training loop polls :attr:`PreemptionHandler.should_stop` after each step, writes ``last.pt``, marks
the run ``interrupted`` and returns. With ``requeue=True`` inside a SLURM job it then asks
``scontrol requeue $SLURM_JOB_ID`` so the same command starts again and resumes.

Commands without a step loop (evaluate, predict, preprocess, download) use :func:`stop_on_signals`: the signal
raises :class:`SignalInterrupt` (a ``KeyboardInterrupt``), so they stop the way Ctrl-C stops them - their
journals and partial files are resumable and every write is atomic. Either way the signal is remembered
(:func:`received_signal`) and the CLI exits ``128 + signum`` (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1),
so ``cxr train ... && cxr evaluate ...`` and ``--dependency=afterok`` stop at an unfinished run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[int, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None
)

#: What a training loop polls for: the preemption signals and Ctrl-C. A handler that only records the signal
#: cannot be lost the way a KeyboardInterrupt raised inside a ``__del__`` or a library's cleanup is (printed as
#: "Exception ignored" and dropped), and the loop checkpoints at its next step boundary; a second Ctrl-C stops
#: at once.
TRAINER_SIGNALS: tuple[int, ...] = (*DEFAULT_SIGNALS, signal.SIGINT)

# The first stop signal of this command (set by every handler here, reset by the CLI for each command).
_received: int | None = None


def received_signal() -> int | None:
    """The number of the signal that stopped the current command, or None."""
    return _received


def reset_received() -> None:
    """Forget the last stop signal (at the start of each command)."""
    global _received
    _received = None


def _remember(signum: int) -> None:
    global _received
    if _received is None:
        _received = signum


def exit_code_for(signum: int) -> int:
    """The shell's convention for a process stopped by ``signum``: 128 + its number."""
    return 128 + int(signum)


class SignalInterrupt(KeyboardInterrupt):
    """Raised in the main thread by :func:`stop_on_signals`; carries the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    _remember(signum)
    raise SignalInterrupt(signum)


@contextlib.contextmanager
def stop_on_signals(signals: Iterable[int] = DEFAULT_SIGNALS) -> Iterator[None]:
    """For the duration of a command, turn SIGTERM / SIGUSR1 into :class:`SignalInterrupt` (and remember SIGINT).

    A trainer's :class:`PreemptionHandler` installed inside replaces these handlers for its loop and restores
    them afterwards. Outside the main thread (nothing can be installed) this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, _raise)
    try:
        yield
    except KeyboardInterrupt as exc:
        _remember(getattr(exc, "signum", signal.SIGINT))
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class PreemptionHandler:
    """Context manager that records SIGTERM/SIGUSR1 and restores the previous handlers on exit.

    Args:
        signals: signal numbers to catch (default SIGTERM and SIGUSR1).
        requeue: after the loop has checkpointed, :meth:`requeue_job` asks SLURM to requeue this job.
        environ: environment to read ``SLURM_JOB_ID`` from (default ``os.environ``).
    """

    def __init__(
        self,
        signals: Iterable[int] = DEFAULT_SIGNALS,
        *,
        requeue: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.requeue = requeue
        self._environ = environ
        self._received: int | None = None
        self._previous: dict[int, Any] = {}
        self.installed = False
        #: Called with the signal number when the first stop signal arrives, so the stop is said at once (the
        #: training loop says when it will take effect and what a second Ctrl-C does).
        self.on_signal: Callable[[int], None] | None = None

    # The handler: record (assigning an attribute is safe at any bytecode boundary) and say so (on_signal logs).
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._received is not None:
            raise KeyboardInterrupt  # Ctrl-C again while the loop winds down: stop now
        first = self._received is None
        if first:
            self._received = signum
        _remember(signum)
        if first and self.on_signal is not None:
            self.on_signal(signum)

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is not threading.main_thread():
            log.warning("Signal handlers can only be installed from the main thread; preemption is not handled.")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    @property
    def should_stop(self) -> bool:
        """True once a handled signal arrived."""
        return self._received is not None

    @property
    def signal_name(self) -> str | None:
        """Name of the signal received (``SIGTERM``), or None."""
        return signal.Signals(self._received).name if self._received is not None else None

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if ``signum`` had arrived (used to propagate a stop across ranks)."""
        self._handle(signum, None)

    def requeue_job(self) -> bool:
        """``scontrol requeue $SLURM_JOB_ID`` when ``requeue`` is set inside SLURM; failures are logged only.

        Returns True when scontrol accepted the request.
        """
        env = os.environ if self._environ is None else self._environ
        if not self.requeue or self._received == signal.SIGINT:  # Ctrl-C is the user's stop, not a preemption
            return False
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            log.warning("--requeue was given but this is not a SLURM job (no SLURM_JOB_ID); not requeuing.")
            return False
        # An array task is requeued by its own id (<array job>_<task>).
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        try:
            done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("Could not requeue SLURM job %s (%s); resubmit the same command to resume.", job_id, exc)
            return False
        if done.returncode != 0:
            log.error(
                "scontrol requeue %s failed (exit %d: %s); resubmit the same command to resume.",
                job_id,
                done.returncode,
                (done.stderr or done.stdout).strip(),
            )
            return False
        log.info("Requeued SLURM job %s; it will resume from the last checkpoint.", job_id)
        return True
