"""The MAML hyper-parameters and the choice of engine.

Kept free of torch so a CLI or config layer can build and validate a :class:`MamlConfig` without importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxr_tools.errors import ConfigError

#: Engines that compute the meta-gradient; all give the same numbers (tested). ``vmap`` runs a meta-batch's tasks
#: as one batched computation. ``auto`` picks learn2learn when it is importable, else ``func``: on CPU no engine
#: is measurably faster (docs/benchmarks.md, "Batched tasks").
ENGINES: tuple[str, ...] = ("auto", "learn2learn", "higher", "func", "vmap")


@dataclass(frozen=True)
class MamlConfig:
    """Inner-loop settings of (first-order) MAML.

    Attributes:
        inner_lr: step size of the inner (adaptation) SGD steps, the α of Finn et al. 2017.
        adapt_steps: number of inner SGD steps on the support set (0 scores the initialisation itself).
        first_order: drop the second-order terms (FOMAML): the meta-gradient is the query-loss gradient at the
            adapted parameters, about twice as fast and far lighter on memory.
        engine: ``auto`` | ``learn2learn`` | ``higher`` | ``func`` | ``vmap`` — how the meta-gradient is computed; see
            :func:`cxr_tools.methods.maml.resolve_engine`.
    """

    inner_lr: float = 0.01
    adapt_steps: int = 5
    first_order: bool = False
    engine: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.inner_lr, (int, float)) and math.isfinite(self.inner_lr) and self.inner_lr >= 0):
            raise ConfigError(f"inner_lr must be a finite number >= 0, got {self.inner_lr!r}.", "Try --inner-lr 0.01.")
        if isinstance(self.adapt_steps, bool) or not isinstance(self.adapt_steps, int) or self.adapt_steps < 0:
            raise ConfigError(f"adapt_steps must be an integer >= 0, got {self.adapt_steps!r}.", "Try --adapt-steps 5.")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"Unknown MAML engine {self.engine!r}.", f"Choose one of: {', '.join(ENGINES)} (auto is the default)."
            )
