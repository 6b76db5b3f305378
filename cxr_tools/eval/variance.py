"""One variance model for every interval and test of cxr (evaluate, compare, the benchmark report).

Few-shot episodes are not independent draws: a meta-test pool of a few hundred patients is redrawn in every
episode, as support and as query, and a method trained with several seeds varies from seed to seed. What varies
must be in the variance, and the parts add (docs/science.md, "The variance model"):

* **Episodes and patients** (one trained model). The metric of episode ``e`` is modelled with crossed random
  effects, the "subjects x items" design of Baayen, Davidson & Bates (2008)::

      y_e = mu + sum_{p in support(e)} s_p / |support(e)| + sum_{p in query(e)} q_p / |query(e)| + eps_e

  with patient effects ``s_p`` (what patient ``p`` does to an episode as a support image), ``q_p`` (as a query
  image) and an episode effect ``eps_e`` (the rest of the draw). Their variances are fitted by REML on the
  observed ``y`` (Patterson & Thompson 1971); the variance of the reported mean is then
  ``1' Cov(y) 1 / E^2``, which counts every pair of episodes that share a patient. Its degrees of freedom come
  from the REML information (Satterthwaite 1946, as in lmerTest's tests for mixed models).
* **Training seeds.** ``S`` runs of a method on the same episodes give the seed-averaged series above plus the
  between-seed variance of the seed means ``/ S``; the two add, with Welch-Satterthwaite degrees of freedom.
  One run of a trained method has no seed variance to measure: its interval is about that trained model.
* **Differences** of two methods are the same model fitted to the episode-wise difference of their seed-averaged
  series (shared episodes and patients cancel what they share), plus both between-seed parts; the p-value and
  the interval come from one variance, so they always agree.

Intervals are ``estimate +- t * se`` clipped to the metric's range: they always contain their estimate.

REML cost: the support and query kernels are mixed as ``rho * K_s + (1 - rho) * K_q`` over a small grid of
``rho`` (profile likelihood); each mixture is diagonalised once per set of episodes (:class:`EpisodeDesign`
caches it), after which one fit is ``O(E)``. A compare of many methods and metrics on one episode list pays the
``O(E^3)`` eigendecompositions once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RHO_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
CONFIDENCE = 0.95
_TAU_MAX = 1e6


@dataclass(frozen=True)
class WithinFit:
    """The episode-and-patient variance of a mean over episodes: ``var``, its ``df`` and the fitted parts."""

    var: float
    df: float
    episode: float  # variance of one episode's own effect
    patient: float  # variance of the patient effects (support and query together, per ``rho``)
    rho: float  # share of the patient variance acting through the support set
    episodes: int
    patients: int


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval: ``[low, high]`` at 95%, the standard error and its degrees of freedom."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    n: int
    patients: int
    seeds: int
    kind: str  # what the variance includes: "episodes+patients", "+seeds"; "none" when not computable
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def half(self) -> float:
        """The unclipped half-width ``t * se`` (NaN when unknown)."""
        return _t(self.df) * self.se if math.isfinite(self.se) else math.nan

    def record(self) -> dict[str, Any]:
        """The JSON form in summary.json / comparison.json."""
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "ci95": self.half,
            "se": self.se,
            "df": self.df,
            "n": self.n,
            "patients": self.patients,
            "seeds": self.seeds,
            "interval": self.kind,
            "variance": dict(self.parts),
        }


@dataclass(frozen=True)
class Difference:
    """``a - b`` over shared episodes: estimate, 95% interval, two-sided p-value, df, and a note when special."""

    diff: float
    low: float
    high: float
    se: float
    df: float
    n: int
    p_value: float
    note: str = ""

    @property
    def half(self) -> float:
        return _t(self.df) * self.se if math.isfinite(self.se) else math.nan


IDENTICAL_NOTE = "identical on every episode"
CONSTANT_NOTE = "the same difference on every episode (exact sign test)"


class EpisodeDesign:
    """Which patients each episode used, as support and as query; kernels and their eigenbases cached per subset.

    ``support`` and ``query``: one sequence of patient ids per episode (in episode order). Patient ids are
    compared as given: callers pass canonical ids.
    """

    def __init__(self, support: Sequence[Sequence[str]], query: Sequence[Sequence[str]]) -> None:
        if len(support) != len(query):
            raise ValueError("support and query must list the same episodes")
        names = sorted({str(p) for ps in (*support, *query) for p in ps})
        code = {p: i for i, p in enumerate(names)}
        self.episodes = len(support)
        self.patients = len(names)
        self._zs = _incidence([[code[str(p)] for p in ps] for ps in support], len(names))
        self._zq = _incidence([[code[str(p)] for p in ps] for ps in query], len(names))
        self._touched = (self._zs > 0) | (self._zq > 0)
        self._cache: dict[tuple[bytes, float], tuple[np.ndarray, np.ndarray, float]] = {}

    def patients_of(self, rows: np.ndarray) -> int:
        """Distinct patients in the episodes ``rows``."""
        return int(self._touched[rows].any(axis=0).sum()) if len(rows) else 0

    def eigen(self, rows: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray, float]:
        """``(eigenvalues, eigenvectors, 1'K1)`` of ``K = rho K_s + (1 - rho) K_q`` on the episodes ``rows``."""
        key = (np.asarray(rows, dtype=np.int64).tobytes(), rho)
        if key not in self._cache:
            zs, zq = self._zs[rows], self._zq[rows]
            kernel = rho * (zs @ zs.T) + (1.0 - rho) * (zq @ zq.T)
            lam, vec = np.linalg.eigh(kernel)
            total = float(rho * np.sum(zs.sum(0) ** 2) + (1.0 - rho) * np.sum(zq.sum(0) ** 2))
            self._cache[key] = (np.clip(lam, 0.0, None), vec, total)
        return self._cache[key]


def _incidence(members: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Row-normalised incidence ``[episodes, patients]``: each episode averages over its patients."""
    z = np.zeros((len(members), n))
    for e, ps in enumerate(members):
        if ps:
            np.add.at(z[e], ps, 1.0 / len(ps))
    return z


def within_variance(values: np.ndarray, design: EpisodeDesign, rows: np.ndarray | None = None) -> WithinFit:
    """The variance of ``nanmean(values)`` under the episode-and-patient model (module doc).

    ``values``: one number per episode of ``rows`` (all episodes of ``design`` by default); NaN episodes are
    left out. One episode gives NaN; two give the plain variance of their mean (1 df).
    """
    y = np.asarray(values, dtype=np.float64)
    idx = np.arange(design.episodes) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(y) != len(idx):
        raise ValueError("one value per episode is needed")
    keep = np.isfinite(y)
    y, idx = y[keep], idx[keep]
    n = len(y)
    patients = design.patients_of(idx)
    if n < 2:
        return WithinFit(math.nan, math.nan, math.nan, math.nan, math.nan, n, patients)
    if n == 2:  # too few episodes to separate patients from episodes: the plain variance of a mean, 1 df
        var = float(np.var(y, ddof=1)) / 2
        return WithinFit(var, 1.0, var * 2, math.nan, math.nan, n, patients)
    centred = y - y.mean()
    if not np.any(np.abs(centred) > 1e-12):
        return WithinFit(0.0, float(n - 1), 0.0, 0.0, math.nan, n, patients)
    best: tuple[float, float, float, float, float, float] | None = None  # loglik, rho, sigma2, tau, var, df
    for rho in RHO_GRID:
        lam, vec, total = design.eigen(idx, rho)
        fit = _profile_reml(vec.T @ y, vec.T @ np.ones(n), lam, n, total)
        if best is None or fit[0] > best[0] + 1e-9:
            best = (fit[0], rho, *fit[1:])
    assert best is not None
    _, rho, sigma2, tau, var, df = best
    return WithinFit(var, df, sigma2, sigma2 * tau, rho if tau > 0 else math.nan, n, patients)


def _profile_reml(
    yt: np.ndarray, xt: np.ndarray, lam: np.ndarray, n: int, total: float
) -> tuple[float, float, float, float, float]:
    """REML of ``Cov(y) = sigma2 (I + tau K)`` in K's eigenbasis (``yt``, ``xt`` rotated y and 1).

    Returns ``(profile loglik, sigma2, tau, var of the mean, Satterthwaite df)``.
    """
    from scipy.optimize import minimize_scalar

    def parts(tau: float) -> tuple[float, float, np.ndarray]:
        h = 1.0 + tau * lam
        c = float(np.sum(xt * xt / h))
        r = float(np.sum(yt * yt / h) - np.sum(xt * yt / h) ** 2 / c)
        return c, max(r, 1e-300), h

    def negloglik(log_tau: float) -> float:
        tau = math.exp(log_tau) if log_tau > -30 else 0.0
        c, r, h = parts(tau)
        return 0.5 * ((n - 1) * math.log(r / (n - 1)) + float(np.sum(np.log(h))) + math.log(c))

    zero = negloglik(-31.0)
    res = minimize_scalar(negloglik, bounds=(-12.0, math.log(_TAU_MAX)), method="bounded", options={"xatol": 1e-4})
    tau = math.exp(float(res.x)) if res.fun < zero else 0.0
    value = min(float(res.fun), zero)
    _, r, h = parts(tau)
    sigma2 = r / (n - 1)
    var = sigma2 * (n + tau * total) / n**2
    # Satterthwaite: Var(var-hat) from the REML information of (sigma2_0, sigma2_1) = (sigma2, sigma2 * tau).
    d = sigma2 * h
    g = xt / d / math.sqrt(float(np.sum(xt * xt / d)))
    kernels = (np.ones_like(lam), lam)
    info = np.empty((2, 2))
    for a in range(2):
        for b in range(2):
            ka, kb = kernels[a], kernels[b]
            info[a, b] = 0.5 * (
                float(np.sum(ka * kb / d**2))
                - 2.0 * float(np.sum(g * ka / d * kb * g))
                + float(np.sum(g * ka * g)) * float(np.sum(g * kb * g))
            )
    grad = np.array([1.0 / n, total / n**2])
    if tau <= 0:
        var_of_var = grad[0] ** 2 / info[0, 0] if info[0, 0] > 0 else math.inf
    else:
        var_of_var = float(grad @ np.linalg.pinv(info) @ grad)
    df = 2.0 * var**2 / var_of_var if var_of_var > 0 and math.isfinite(var_of_var) else float(n - 1)
    return -value, sigma2, tau, var, float(min(max(df, 1.0), n - 1))


def estimate(
    matrix: np.ndarray,
    design: EpisodeDesign,
    rows: np.ndarray | None = None,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    seeded: bool = True,
) -> Interval:
    """A method's estimate and interval from its scores ``[seeds, episodes]`` on the episodes ``rows``.

    ``seeded``: the runs are training seeds of one method (their spread is a variance component). With one run
    of a trained method the interval is about that trained model (``kind`` says so).
    """
    m = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    seeds = m.shape[0]
    with np.errstate(invalid="ignore"):
        averaged = _nanmean(m, axis=0)
    finite = np.isfinite(averaged)
    mean = float(np.mean(averaged[finite])) if finite.any() else math.nan
    within = within_variance(averaged, design, rows)
    parts = {"episode": within.episode, "patient": within.patient, "support_share": within.rho}
    var, df, kind = within.var, within.df, "episodes+patients"
    if seeded and seeds >= 2 and math.isfinite(var):
        seed_means = np.array([np.mean(row[finite & np.isfinite(row)]) for row in m])
        seed_means = seed_means[np.isfinite(seed_means)]
        if len(seed_means) >= 2:
            between = float(np.var(seed_means, ddof=1)) / len(seed_means)
            parts["seed"] = between * len(seed_means)
            var, df = _welch([(within.var, within.df), (between, len(seed_means) - 1.0)])
            kind = "episodes+patients+seeds"
    if not math.isfinite(var):
        kind = "none"
    se = math.sqrt(var) if math.isfinite(var) else math.nan
    return Interval(mean, *_clip(mean, se, df, bounds), se, df, within.episodes, within.patients, seeds, kind, parts)


def difference(a: np.ndarray, b: np.ndarray, design: EpisodeDesign, rows: np.ndarray | None = None) -> Difference:
    """``a - b`` for two methods' scores ``[seeds, episodes]`` on the same episodes (module doc)."""
    ma = np.atleast_2d(np.asarray(a, dtype=np.float64))
    mb = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if ma.shape[1] != mb.shape[1]:
        raise ValueError("paired differences need the same episodes on both sides")
    with np.errstate(invalid="ignore"):
        d = _nanmean(ma, axis=0) - _nanmean(mb, axis=0)
    shared = np.isfinite(d)
    n = int(shared.sum())
    if n < 2:
        return Difference(math.nan, math.nan, math.nan, math.nan, math.nan, n, math.nan)
    diff = float(np.mean(d[shared]))
    within = within_variance(d, design, rows)
    components = [(within.var, within.df)]
    for m in (ma, mb):
        if m.shape[0] >= 2:
            means = np.array([np.mean(row[shared & np.isfinite(row)]) for row in m])
            means = means[np.isfinite(means)]
            if len(means) >= 2:
                components.append((float(np.var(means, ddof=1)) / len(means), len(means) - 1.0))
    var, df = _welch(components)
    if var <= 0 or not math.isfinite(var):
        if np.allclose(d[shared], 0.0, atol=1e-12):
            return Difference(0.0, 0.0, 0.0, 0.0, df, n, 1.0, IDENTICAL_NOTE)
        if np.allclose(d[shared], d[shared][0], atol=1e-12):  # no spread to model: the exact sign test
            p = max(2.0 ** (1 - n), float(np.finfo(float).tiny))
            return Difference(diff, diff, diff, 0.0, df, n, p, CONSTANT_NOTE)
        return Difference(diff, math.nan, math.nan, math.nan, df, n, math.nan, "no variance estimate")
    from scipy import stats

    se = math.sqrt(var)
    p = float(2.0 * stats.t.sf(abs(diff) / se, df))
    half = _t(df) * se
    return Difference(diff, diff - half, diff + half, se, df, n, p)


def design_from_tables(patients: Any, episodes: Sequence[int]) -> EpisodeDesign:
    """An :class:`EpisodeDesign` from an ``episode_patients.csv`` table (``episode, role, patient``) for
    ``episodes`` (in this order); a role absent from the table gives that role no patients."""
    groups: Mapping[Any, Any] = {k: g for k, g in patients.groupby(["episode", "role"], sort=False)["patient"]}
    support = [list(groups.get((e, "support"), [])) for e in episodes]
    query = [list(groups.get((e, "query"), [])) for e in episodes]
    return EpisodeDesign(support, query)


def _welch(components: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Sum of independent variance estimates and its Welch-Satterthwaite degrees of freedom."""
    parts = [(v, d) for v, d in components if math.isfinite(v) and v >= 0]
    if not parts:
        return math.nan, math.nan
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if d > 0)
    df = total * total / denom if denom > 0 else max((d for _, d in parts), default=math.nan)
    return total, float(df)


def _t(df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) if math.isfinite(df) and df > 0 else math.nan


def _clip(mean: float, se: float, df: float, bounds: tuple[float, float]) -> tuple[float, float]:
    if not (math.isfinite(mean) and math.isfinite(se)):
        return math.nan, math.nan
    half = _t(df) * se
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def _nanmean(m: np.ndarray, axis: int) -> np.ndarray:
    ok = np.isfinite(m)
    n = ok.sum(axis=axis)
    total = np.where(ok, m, 0.0).sum(axis=axis)
    return np.where(n > 0, total / np.where(n > 0, n, 1), np.nan)
