"""Device selection, mixed precision and thread counts.

``--device auto|cpu|cuda|cuda:N|mps`` resolves here once per command. A device the machine does not have is
a :class:`~cxr_tools.errors.ConfigError` that says which devices exist, never a silent fallback: a SLURM job
that asked for a GPU and landed on a CPU node should fail loudly, not run 50x slower.

Mixed precision (``--amp``) is a CUDA feature here: on CPU and MPS it is switched off with a log line, so a
config written for a GPU cluster still runs on a laptop. bf16 needs no loss scaling; fp16 gets a
:class:`torch.amp.GradScaler`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device` the machine really has.

    ``auto`` picks CUDA, then MPS, then CPU. Anything unavailable raises :class:`ConfigError`.
    """
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise ConfigError(
                "--device mps was asked for but this machine has no usable MPS (Apple GPU).",
                "Use --device cpu or --device auto.",
            )
        return torch.device("mps")
    match = _CUDA_RE.match(text)
    if match:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {spec} was asked for but CUDA is not available here "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}).",
                "Use --device cpu, run on a GPU node, or check CUDA_VISIBLE_DEVICES.",
            )
        index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"--device {spec} was asked for but only {count} CUDA device(s) are visible "
                f"(cuda:0..cuda:{count - 1}).",
                "Pick an existing index or check CUDA_VISIBLE_DEVICES.",
            )
        return torch.device("cuda", index)
    raise ConfigError(f"Unknown device '{spec}'.", "Use auto, cpu, cuda, cuda:N or mps.")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_device(device: torch.device) -> str:
    """A human-readable name for run.json, e.g. ``cuda:0 (NVIDIA H100)`` or ``cpu``."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


@dataclass(frozen=True)
class AmpSettings:
    """Whether mixed precision is really on, and with which dtype ("bf16" or "fp16")."""

    enabled: bool
    dtype: str = "bf16"

    @property
    def needs_scaler(self) -> bool:
        """fp16 underflows without loss scaling; bf16 has fp32's range and needs none."""
        return self.enabled and self.dtype == "fp16"


def resolve_amp(device: torch.device, enabled: bool, dtype: str = "auto") -> AmpSettings:
    """Decide the effective AMP setting: on only for CUDA; ``auto`` dtype = bf16 where supported, else fp16."""
    import torch

    if dtype not in {"auto", "bf16", "fp16"}:
        raise ConfigError(f"Unknown AMP dtype '{dtype}'.", "Use auto, bf16 or fp16.")
    if not enabled:
        return AmpSettings(False, "bf16" if dtype == "auto" else dtype)
    if device.type != "cuda":
        log.info("--amp is only used on CUDA; training in float32 on %s.", device)
        return AmpSettings(False, "bf16" if dtype == "auto" else dtype)
    if dtype == "auto":
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return AmpSettings(True, dtype)


def autocast_context(device: torch.device, enabled: bool | AmpSettings, dtype: str = "auto") -> Any:
    """A context manager running the forward pass under autocast on ``device``'s type, a no-op when AMP is off.

    :func:`resolve_amp` turns AMP on only for CUDA; an explicit ``AmpSettings(True, ...)`` on the CPU runs CPU
    autocast (what the CPU tests of the fp16 scaler path use).
    """
    import torch

    amp = enabled if isinstance(enabled, AmpSettings) else resolve_amp(device, enabled, dtype)
    if not amp.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp.dtype == "bf16" else torch.float16)


def make_grad_scaler(device: torch.device, amp: AmpSettings) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (a disabled one is a cheap pass-through, no host sync)."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=amp.needs_scaler)


def set_threads(n: int | None) -> int:
    """Use ``n`` intra-op CPU threads (None or 0 keeps torch's default); return the count in effect.

    On shared cluster nodes torch otherwise starts one thread per *physical* core of the node, not per core
    the job was given, and oversubscribes.
    """
    import torch

    if n is not None and n > 0:
        torch.set_num_threads(n)
        with contextlib.suppress(RuntimeError):  # only allowed before the first parallel region
            torch.set_num_interop_threads(max(1, min(n, 4)))
    return torch.get_num_threads()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``torch.cuda.OutOfMemoryError``, the CPU allocator's
    ``RuntimeError`` ("can't allocate memory"), MPS's, or Python's ``MemoryError``."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory"))


@contextlib.contextmanager
def explain_out_of_memory(message: str, hint: str) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into a :class:`ResourceError` that says what to lower.

    A raw allocator error names bytes and a C++ file; a user needs the option to change (exit code 1, one line).
    """
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        from cxr_tools.errors import ResourceError

        raise ResourceError(message, hint) from exc
