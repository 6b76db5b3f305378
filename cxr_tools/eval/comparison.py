"""Statistics of ``cxr compare``: seed-aware estimates and Holm-adjusted paired tests (pure numpy/scipy).

* **One method, several training seeds.** The scores of ``S`` runs on the same ``E`` episodes form a matrix
  ``[S, E]``. The estimate is the mean of the seed-averaged episode scores. Its variance has a within-seed part
  (the wider of the episode Student-t interval on the seed-averaged scores and the members' patient-cluster
  bootstrap intervals, as a variance ``(half / t)²``) plus the between-seed part ``var(seed means) / S``; the
  95% half-width uses Student t with Welch-Satterthwaite degrees of freedom, so two or three seeds give an
  honestly wide interval. See docs/science.md.
* **Paired tests.** Differences between methods are paired episode by episode on seed-averaged scores
  (:func:`~cxr_tools.eval.metrics.paired_difference`); a family of tests (all pairs, or all against a
  reference; each class its own family) is Holm-Bonferroni adjusted and the verdict uses the adjusted p-values.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_tools.eval.metrics import holm, mean_ci, paired_difference

ALPHA = 0.05


def seed_group_estimate(matrix: np.ndarray, within_half: float | None = None) -> dict[str, Any]:
    """``{mean, ci95, low, high, n, seeds, episode_ci95, seed_sd, df, interval}`` of scores ``[S, E]``.

    ``within_half``: a within-seed 95% half-width known from elsewhere (the members' bootstrap); the wider of it
    and the episode-t half-width of the seed-averaged scores is used. ``S == 1`` gives the within-seed interval.
    """
    m = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    with quiet_nan():
        averaged = np.nanmean(m, axis=0)
    est = mean_ci(averaged)
    n_eps = est.n
    within = est.ci95 if within_half is None or not math.isfinite(within_half) else max(est.ci95, within_half)
    out: dict[str, Any] = {"mean": est.mean, "n": n_eps, "seeds": int(m.shape[0]), "episode_ci95": est.ci95}
    seeds = m.shape[0]
    if seeds < 2 or n_eps < 2 or not math.isfinite(within):
        half, df, seed_sd, kind = within, float(n_eps - 1), math.nan, "episode"
    else:
        from scipy import stats

        with quiet_nan():
            seed_means = np.nanmean(m, axis=1)
        seed_sd = float(np.std(seed_means, ddof=1))
        a = (within / float(stats.t.ppf(0.975, n_eps - 1))) ** 2
        b = seed_sd**2 / seeds
        denom = a**2 / (n_eps - 1) + b**2 / (seeds - 1)
        df = (a + b) ** 2 / denom if denom > 0 else float(n_eps - 1)
        half = float(stats.t.ppf(0.975, df) * math.sqrt(a + b)) if a + b > 0 else 0.0
        kind = "seeds"
    out.update(ci95=half, low=est.mean - half, high=est.mean + half, seed_sd=seed_sd, df=df, interval=kind)
    return out


@dataclass(frozen=True)
class PairTest:
    """``a - b`` paired over shared episodes (``scope``: ``overall`` or a class), raw and Holm-adjusted p."""

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


def pair_tests(
    scope: str, values: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]], alpha: float = ALPHA
) -> list[PairTest]:
    """Paired differences for ``pairs`` of ``values`` (name -> aligned per-episode scores), Holm-adjusted as one
    family."""
    diffs = [paired_difference(values[a], values[b]) for a, b in pairs]
    adjusted = holm([d.p_value for d in diffs])
    return [
        PairTest(scope, a, b, d.mean, d.ci95, d.n, d.p_value, p, bool(math.isfinite(p) and p < alpha), d.note)
        for (a, b), d, p in zip(pairs, diffs, adjusted, strict=True)
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
