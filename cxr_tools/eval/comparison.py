"""Statistics of ``cxr compare``: Holm-adjusted paired tests over one family, and the budget column.

Every estimate, interval and paired difference comes from :mod:`cxr_tools.eval.variance` (episodes, support and
query patients, training seeds). Here: the family of tests (all pairs or all against a reference, overall and
per class together) is Holm-Bonferroni adjusted as ONE family, and the verdict uses the adjusted p-values.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cxr_tools.eval.metrics import holm
from cxr_tools.eval.variance import Difference

ALPHA = 0.05


@dataclass(frozen=True)
class PairTest:
    """``a - b`` over shared episodes (``scope``: ``overall`` or a class): the difference, its 95% interval
    ``[low, high]`` (``ci95`` its half-width), raw and Holm-adjusted p (over the whole family)."""

    scope: str
    a: str
    b: str
    diff: float
    ci95: float
    n: int
    p_raw: float
    p_value: float
    significant: bool
    note: str
    low: float = math.nan
    high: float = math.nan
    df: float = math.nan


def pair_tests(family: Sequence[tuple[str, str, str, Difference]], alpha: float = ALPHA) -> list[PairTest]:
    """The tests of ``family`` (``(scope, a, b, difference)``), Holm-adjusted together as one family."""
    adjusted = holm([d.p_value for *_, d in family])
    return [
        PairTest(
            scope,
            a,
            b,
            d.diff,
            d.half,
            d.n,
            d.p_value,
            p,
            bool(math.isfinite(p) and p < alpha),
            d.note,
            d.low,
            d.high,
            d.df,
        )
        for (scope, a, b, d), p in zip(family, adjusted, strict=True)
    ]


def budget_text(settings: Mapping[str, Any] | None) -> str:
    """The adaptation budget in a few characters: ``steps=100 lr=0.01 adam``, ``inner_lr=0.1 adapt_steps=5``."""
    if not settings:
        return ""
    parts = []
    for key in ("steps", "adapt_steps", "lr", "inner_lr", "mode", "finetune", "optimiser", "optimizer", "temperature"):
        value = settings.get(key)
        if value is None or (key == "finetune" and settings.get("mode") == value):
            continue
        if key in ("optimiser", "optimizer", "mode", "finetune"):
            parts.append(str(value))
        else:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


@contextlib.contextmanager
def quiet_nan() -> Iterator[None]:
    """Silence numpy's "mean of empty slice" warnings (NaN is the intended answer there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield
