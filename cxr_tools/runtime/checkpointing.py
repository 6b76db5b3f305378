"""Training checkpoints that resume bit-for-bit, and the policies that decide when to write them.

A training state file (``checkpoints/last.pt``) is a plain dict of tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(weights_only=True)`` - no pickled code runs when a user opens a run
they were sent::

    {"format": "cxr-training-state", "version": 1,
     "model": state_dict, "optimizer": ..., "scheduler": ... | None, "scaler": ... | None,
     "step": int, "epoch": int, "rng": rng_state(), "extra": {...}}

**Frozen weights are named, not saved.** Weights that never change during a run and reload from their source (a
frozen foundation encoder: 350 MB for a ViT-B, beside a head of a few KB) are left out of ``last.pt`` and
``best.pt`` when the trainer describes them with :class:`FrozenWeights`: the file then holds the other entries
of the state dict and ``"frozen": {"prefixes": [...], "identity": {...}}`` (version 2), and restoring refuses,
before anything is loaded, a model whose frozen weights have another identity (the encoder files changed). A
version-1 file holding the full state still restores; its frozen entries must equal the model's.

``extra`` carries the loop position, sampler state, early stopping and best tracking. Writes go through
:func:`~cxr_tools.runtime.fs.atomic_path` (temporary file, fsync, rename): a job killed while saving leaves
the previous ``last.pt`` intact. ``best.pt`` holds only the model weights plus the monitored value.

Damage is told, never loaded: each file carries a ``checksum`` (SHA-256 over every tensor's bytes and every
value, :func:`state_digest`), checked on loading, because ``torch.load`` reads a bit-flipped tensor without a
word. Writing ``last.pt`` first keeps the one it replaces as ``last.prev.pt`` (a hard link: no copy, the disk
holds two checkpoints), so a damaged ``last.pt`` names a whole predecessor to resume from.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.runtime.fs import atomic_path
from cxr_tools.runtime.seeding import rng_state, set_rng_state

if TYPE_CHECKING:
    import torch

STATE_FORMAT = "cxr-training-state"
BEST_FORMAT = "cxr-best-weights"
STATE_VERSION = 2  # the newest version this code reads; it writes 1, or 2 when frozen weights are left out
FROZEN_VERSION = 2
CHECKSUM_KEY = "checksum"
FROZEN_KEY = "frozen"
RESUME_HINT = "Resume with the options the run was started with, or pass --overwrite to start again."


@dataclass(frozen=True)
class FrozenWeights:
    """Model weights a checkpoint names instead of holding: the state-dict entries under ``prefixes`` never
    change during the run and are reloaded from their source when the model is built, so ``last.pt`` / ``best.pt``
    keep ``identity`` (plain values that pin the source, e.g. an encoder's name and weight checksum) in their place.

    ``hint`` is what to do when a checkpoint's identity differs from the model's (restore the source, or start
    over); the trainer supplies all three (:class:`~cxr_tools.runtime.trainer.LoopParts`).
    """

    prefixes: tuple[str, ...]
    identity: Mapping[str, Any]
    hint: str = "Restore the weights the run was started with, or pass --overwrite to start it again."

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores in place of the weights."""
        return {"prefixes": list(self.prefixes), "identity": dict(self.identity)}

    def covers(self, key: str) -> bool:
        return key.startswith(self.prefixes)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (state dicts without ``module.``)."""
    return getattr(model, "module", model)


def _model_entries(model: torch.nn.Module, frozen: FrozenWeights | None) -> dict[str, Any]:
    """A checkpoint's ``version`` and ``model`` entries: the whole state dict (version 1), or without the frozen
    entries, which ``frozen`` names in their place (version 2)."""
    weights = unwrap_model(model).state_dict()
    if frozen is None:
        return {"version": 1, "model": weights}
    kept = {k: v for k, v in weights.items() if not frozen.covers(k)}
    return {"version": FROZEN_VERSION, "model": kept, FROZEN_KEY: frozen.record()}


def save_training_state(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: Any | None,
    scheduler: Any | None,
    scaler: Any | None,
    step: int,
    epoch: int,
    extra: Mapping[str, Any] | None = None,
    *,
    rng: Mapping[str, Any] | None = None,
    frozen: FrozenWeights | None = None,
) -> Path:
    """Atomically write everything needed to resume training to ``path``.

    Args:
        optimizer, scheduler, scaler: anything with ``state_dict()`` (or None).
        step, epoch: counters where training resumes.
        extra: loop/sampler/early-stopping state; must hold only tensors, numbers, strings, lists, dicts.
        rng: RNG states to store (default: this process's :func:`rng_state`).
        frozen: model weights named by their identity instead of saved (:class:`FrozenWeights`).
    """

    state = {
        "format": STATE_FORMAT,
        **_model_entries(model, frozen),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "rng": dict(rng) if rng is not None else rng_state(),
        "extra": dict(extra or {}),
    }
    keep_previous(path)
    return save_checkpoint(path, state)


def previous_of(path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint ``path`` replaced by the last save is kept (``last.pt`` -> ``last.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def keep_previous(path: str | os.PathLike[str]) -> None:
    """Keep the current ``path`` as :func:`previous_of` before it is replaced: a hard link, renamed into place
    (atomic); skipped where the file system has no hard links."""
    path = Path(path)
    if not path.is_file():
        return
    prev = previous_of(path)
    link = path.with_name(f".{prev.name}.{os.getpid()}.tmp")  # a leftover is removed with the run's temporaries
    try:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.link(path, link)
        os.replace(link, prev)
    except OSError:
        with contextlib.suppress(OSError):
            link.unlink()


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over a checkpoint's content: every tensor's dtype, shape and bytes, every other value's ``repr``,
    in key order; the same before ``torch.save`` and after ``torch.load`` (and independent of the device)."""
    import torch

    digest = hashlib.sha256()

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            flat = obj.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"T{flat.dtype}{tuple(obj.shape)}:".encode())
            digest.update(flat.view(torch.uint8).numpy().data)
        elif isinstance(obj, Mapping):
            digest.update(b"{")
            for key in sorted(obj, key=repr):
                digest.update(repr(key).encode() + b":")
                walk(obj[key])
            digest.update(b"}")
        elif isinstance(obj, (list, tuple)):
            digest.update(b"[")
            for item in obj:
                walk(item)
            digest.update(b"]")
        else:
            digest.update(repr(obj).encode() + b";")

    walk({k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def with_checksum(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with its :func:`state_digest` under :data:`CHECKSUM_KEY` (what every checkpoint is saved as)."""
    return {**state, CHECKSUM_KEY: state_digest(state)}


def _damage_hint(path: Path) -> str:
    """What to do about a damaged checkpoint: resume from its kept predecessor when that one is whole."""
    prev = previous_of(path)
    if prev.is_file():
        try:
            step = load_checkpoint(prev).get("step")
        except ModelError:
            pass
        else:
            return (
                f"The previous checkpoint {prev.name} (step {step}) is whole: move it over {path.name} "
                f"(mv {prev} {path}) and rerun the same command to resume from there."
            )
    if path.name.startswith("last"):
        return "No earlier checkpoint is kept: rerun with --overwrite to start the run again."
    return "Rerun the training that wrote it (with --overwrite) to write it again."


def _check_plain(obj: Any, where: str) -> None:
    import torch

    if isinstance(obj, (torch.Tensor, bool, int, float, str, type(None), torch.dtype, torch.device)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise ModelError(f"Checkpoint key {where}[{key!r}] is neither str nor int.")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    hint = "Convert numpy arrays with torch.from_numpy and paths with str()."
    raise ModelError(f"Checkpoint value {where} is a {type(obj).__name__}, which weights_only loading refuses.", hint)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write a training ``state`` dict atomically to ``path`` with ``torch.save``, as is.

    ``state`` may hold tensors, dicts, lists, tuples, numbers, strings and ``None`` only (model / optimizer /
    scheduler / scaler state dicts and :func:`cxr_tools.runtime.seeding.rng_state` qualify), so that
    :func:`load_checkpoint` (``torch.load(weights_only=True)``) can read it; anything else is refused here,
    with the offending key, instead of at resume time. :func:`save_training_state` and :func:`save_model_state`
    write through it.
    """
    import torch

    _check_plain(state, "state")
    with atomic_path(path) as tmp:
        torch.save(with_checksum(state), tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; unreadable files raise :class:`ModelError`."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint {path} does not exist.", "Check the run directory path.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
        raise ModelError(
            f"Checkpoint {path} is unreadable: damaged (truncated or corrupted) or not a safe weights file ({reason}).",
            _damage_hint(path),
        ) from exc
    if not isinstance(state, dict):
        raise ModelError(f"Checkpoint {path} does not hold a state dictionary.", _damage_hint(path))
    expected = state.get(CHECKSUM_KEY)
    if expected is not None and state_digest(state) != expected:
        raise ModelError(f"Checkpoint {path} is damaged: its content does not match its checksum.", _damage_hint(path))
    return state


def load_training_state(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a training state written by :func:`save_training_state` (checks its format and version)."""
    state = load_checkpoint(path, map_location)
    if state.get("format") != STATE_FORMAT:
        raise ModelError(f"{path} is not a cxr training checkpoint.", "Pass --overwrite to start the run again.")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise ModelError(
            f"{path} was written by a newer cxr-tools (checkpoint version {state.get('version')}).",
            "Upgrade cxr-tools to resume this run.",
        )
    return state


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _short(value: Any) -> str:
    """A value for a one-line message: long strings (checksums) cut to their first 12 characters."""
    return f"'{value[:12]}...'" if isinstance(value, str) and len(value) > 16 else repr(value)


def _differences(saved: Any, now: Any, where: str = "") -> list[str]:
    """``key: saved X, now Y`` for every value that differs between two identities (nested keys dotted)."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        out: list[str] = []
        for key in sorted(set(saved) | set(now), key=str):
            out += _differences(saved.get(key), now.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if saved == now else [f"{where or 'identity'}: saved {_short(saved)}, now {_short(now)}"]


def check_frozen(state: Mapping[str, Any], model: torch.nn.Module, frozen: FrozenWeights | None, source: str) -> None:
    """Refuse the checkpoint ``state`` (read from ``source``) for ``model`` unless its frozen weights are the
    model's: the same recorded identity (a checkpoint that names them), or equal tensors (a version-1 checkpoint
    that holds them). Called before anything is loaded, so a refusal leaves the model as it was.
    """
    import torch

    recorded = state.get(FROZEN_KEY)
    if recorded is not None:
        prefixes = [str(p) for p in recorded.get("prefixes", ())]
        named = ", ".join(f"{p}*" for p in prefixes)
        if frozen is None:
            raise ModelError(
                f"{_capital(source)} leaves out frozen weights ({named}) that this model does not reload.",
                RESUME_HINT,
            )
        changed = _differences(recorded.get("identity"), dict(frozen.identity))
        if prefixes != list(frozen.prefixes):
            changed.append(f"prefixes: saved {named}, now {', '.join(f'{p}*' for p in frozen.prefixes)}")
        if changed:
            raise ModelError(
                f"The frozen weights ({named}) differ from those {source} was saved with ({'; '.join(changed)}).",
                frozen.hint,
            )
        return
    if frozen is None:
        return
    held = state.get("model") or {}
    differing = [
        k
        for k, v in unwrap_model(model).state_dict().items()
        if frozen.covers(k) and k in held and not torch.equal(held[k].to("cpu"), v.detach().to("cpu"))
    ]
    if differing:
        raise ModelError(
            f"The frozen weights differ from those {source} holds ({len(differing)} tensors, e.g. {differing[0]}).",
            frozen.hint,
        )


def load_model_weights(
    state: Mapping[str, Any],
    model: torch.nn.Module,
    frozen: FrozenWeights | None = None,
    *,
    source: str = "the checkpoint",
    hint: str = RESUME_HINT,
) -> None:
    """Load a checkpoint's ``model`` entry into ``model`` after :func:`check_frozen`: every entry must be there,
    except the frozen ones a checkpoint names instead of holding (the model already holds them, from their source).

    Raises :class:`ModelError` (``source`` does not fit this model, then ``hint``) on missing, unexpected or
    mis-shaped entries.
    """
    check_frozen(state, model, frozen, source)
    recorded = state.get(FROZEN_KEY)
    prefixes = tuple(recorded["prefixes"]) if recorded is not None else ()
    try:
        missing, unexpected = unwrap_model(model).load_state_dict(state["model"], strict=False)
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{_capital(source)} does not fit this model ({str(exc).splitlines()[0]}).", hint) from exc
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        keys = ", ".join([f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]])
        raise ModelError(f"{_capital(source)} does not fit this model ({keys}).", hint)


def restore_training_state(
    state: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    *,
    restore_rng: bool = True,
    frozen: FrozenWeights | None = None,
    source: str = "the checkpoint",
) -> None:
    """Load model/optimizer/scheduler/scaler state and (by default) the RNG states from ``state``.

    ``frozen`` describes the model's frozen weights (:class:`FrozenWeights`): a checkpoint that names other ones,
    or holds other values for them, is refused before anything is loaded (:func:`check_frozen`); ``source`` names
    the checkpoint in messages.
    """
    load_model_weights(state, model, frozen, source=source)
    try:
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        what = f"{_capital(source)} does not fit this optimizer or schedule ({str(exc).splitlines()[0]})."
        raise ModelError(what, RESUME_HINT) from exc
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])


def save_model_state(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    *,
    step: int,
    epoch: int,
    extra: Mapping[str, Any] | None,
    frozen: FrozenWeights | None = None,
) -> Path:
    """Atomically write only the weights (``best.pt``): ``{"format", "version", "model", "step", "epoch", "extra"}``,
    and ``frozen`` in place of the weights it names (:class:`FrozenWeights`)."""

    state = {
        "format": BEST_FORMAT,
        **_model_entries(model, frozen),
        "step": int(step),
        "epoch": int(epoch),
        "extra": dict(extra or {}),
    }
    return save_checkpoint(path, state)


class CheckpointPolicy:
    """When to write ``last.pt``: every ``every_steps`` optimizer steps and/or every ``every_minutes``.

    Epoch ends and preemption always write one; the policy covers long epochs. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        every_steps: int | None = None,
        every_minutes: float | None = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_steps is not None and every_steps < 1:
            raise ConfigError("checkpoint every_steps must be >= 1 (or unset).")
        if every_minutes is not None and every_minutes <= 0:
            raise ConfigError("checkpoint every_minutes must be > 0 (or unset).")
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self._clock = clock
        self._last_time = clock()
        self._last_step = 0

    def should_save(self, step: int) -> bool:
        """True when ``step`` is a multiple of ``every_steps`` or ``every_minutes`` passed since the last save."""
        if self.every_steps is not None and step > self._last_step and step % self.every_steps == 0:
            return True
        return self.every_minutes is not None and (self._clock() - self._last_time) >= 60.0 * self.every_minutes

    def mark_saved(self, step: int) -> None:
        """Record that a checkpoint was written at ``step`` (restarts the timer)."""
        self._last_step = step
        self._last_time = self._clock()


def _check_mode(mode: str) -> None:
    if mode not in {"max", "min"}:
        raise ConfigError(f"Unknown monitor mode '{mode}'.", "Use max (e.g. AUC) or min (e.g. loss).")


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (NaN never improves)."""
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclass
class BestTracker:
    """The best value of a monitored metric so far and the epoch/step it was reached at."""

    monitor: str
    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def update(self, value: float, *, epoch: int, step: int) -> bool:
        """Record ``value``; True when it is a new best (the caller then writes ``best.pt``)."""
        if not is_improvement(value, self.best, self.mode, self.min_delta):
            return False
        self.best, self.best_epoch, self.best_step = float(value), epoch, step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch, "best_step": self.best_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.best_step = state["best"], state["best_epoch"], state["best_step"]


@dataclass
class EarlyStopping:
    """Stop when the monitored metric has not improved by ``min_delta`` for ``patience`` evaluations."""

    patience: int
    min_delta: float = 0.0
    mode: str = "max"
    best: float | None = None
    bad_epochs: int = 0
    stopped: bool = False

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if self.patience < 1:
            raise ConfigError("Early-stopping patience must be >= 1.", "Leave it unset to train all epochs.")

    def step(self, value: float) -> bool:
        """Record one evaluation; True when training should stop now."""
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = float(value), 0
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_epochs, self.stopped = state["best"], int(state["bad_epochs"]), bool(state["stopped"])
