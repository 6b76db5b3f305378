"""Seeding and RNG state capture for bit-identical resume.

One ``--seed`` seeds Python, NumPy and torch (:func:`seed_everything`) for third-party code that draws from
global state (dropout, weight init). Our own samplers never touch global state: they take a
:func:`make_generator` / :func:`numpy_generator` built from the seed and a key (e.g. the epoch) via
:func:`derive_seed`, so an epoch's order depends on nothing but ``(seed, epoch)``.

:func:`rng_state` captures every global RNG as plain tensors, lists, ints, floats and strings, so a checkpoint
holding it loads with ``torch.load(weights_only=True)`` (no pickled NumPy or Python objects).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's legacy global RNG and torch (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer ``keys`` (e.g. epoch, rank); stable across runs."""
    import numpy as np

    words = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in keys)).generate_state(2)
    return int((int(words[0]) << 32 | int(words[1])) & (2**63 - 1))


def make_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator seeded from ``seed`` (and ``keys``, see :func:`derive_seed`)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *keys) if keys else int(seed))
    return gen


def numpy_generator(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy Generator (PCG64) seeded from ``seed`` and ``keys``."""
    import numpy as np

    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in keys)))


def numpy_generator_state(gen: np.random.Generator) -> dict[str, Any]:
    """The state of a NumPy Generator with big integers as strings (``weights_only``-safe)."""
    return _ints_to_str(gen.bit_generator.state)


def set_numpy_generator_state(gen: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a state captured by :func:`numpy_generator_state`."""
    gen.bit_generator.state = _str_to_ints(state)


def _ints_to_str(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _ints_to_str(v) for k, v in obj.items()}
    if isinstance(obj, int) and not isinstance(obj, bool):
        return {"__int__": str(obj)}
    return obj


def _str_to_ints(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__int__"}:
            return int(obj["__int__"])
        return {k: _str_to_ints(v) for k, v in obj.items()}
    return obj


def rng_state() -> dict[str, Any]:
    """Capture Python, NumPy (legacy global), torch CPU and (if initialised) CUDA RNG states."""
    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    keys = np.asarray(keys)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "has_gauss": int(gauss_next is not None),
            "gauss_next": float(gauss_next) if gauss_next is not None else 0.0,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state` (CUDA only when present on both sides)."""
    import numpy as np
    import torch

    try:
        py = state["python"]
        gauss = py["gauss_next"] if py["has_gauss"] else None
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), gauss))
        nps = state["numpy"]
        np.random.set_state(
            (nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
        )
        torch.set_rng_state(state["torch"].cpu())
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"The checkpoint's RNG state is unreadable ({exc}).", "Start the run afresh with --overwrite."
        ) from exc
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


def generator_state(gen: torch.Generator) -> torch.Tensor:
    """The state of a torch Generator (a uint8 tensor, ``weights_only``-safe)."""
    return gen.get_state()


def set_generator_state(gen: torch.Generator, state: torch.Tensor) -> None:
    """Restore a state captured by :func:`generator_state`."""
    gen.set_state(state.cpu())
