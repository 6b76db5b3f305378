"""A simulated few-shot evaluation whose truth is known, to hold :mod:`cxr_tools.eval.variance` to its promises.

A meta-test pool of patients (each positive or negative for the episode class) is redrawn in every episode: K
positive and K negative support patients, Q and Q query patients, all distinct within the episode (the protocol's
rule). What varies, as in a real evaluation:

* a patient's difficulty ``d_p`` shifts every score of that patient's image (shared by all methods);
* a method x patient interaction ``i_mp`` (each method finds other patients hard);
* a patient's effect as support ``g_p`` (a bad support image ruins an adaptation) and an episode's own luck;
* a training seed's effect ``alpha`` on the method's separation.

Scores are Gaussian, so the expected AUC over everything that varies is exact:
``Phi(delta / sqrt(2 (sd_d^2 + sd_i^2 + 1) + sd_g^2 / (2K) + sd_a^2 + sd_alpha^2))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class World:
    patients: int = 120
    prevalence: float = 0.4
    episodes: int = 100
    shots: int = 5
    queries: int = 10
    delta: float = 1.0
    sd_difficulty: float = 0.7
    sd_interaction: float = 0.5
    sd_support: float = 1.0
    sd_episode: float = 0.3
    sd_seed: float = 0.15

    def truth(self, effect: float = 0.0) -> float:
        tau2 = 2 * (self.sd_difficulty**2 + self.sd_interaction**2 + 1)
        v = self.sd_support**2 / (2 * self.shots) + self.sd_episode**2 + self.sd_seed**2
        return float(stats.norm.cdf((self.delta + effect) / math.sqrt(tau2 + v)))


def simulate(world: World, rng: np.random.Generator, seeds: tuple[int, ...] = (2, 2), effects: tuple[float, ...] = ()):
    """``(matrices, support, query)``: per method an AUC matrix ``[seeds, episodes]``, and the patient ids of each
    episode's support and query sets."""
    w = world
    status = rng.random(w.patients) < w.prevalence
    pos, neg = np.flatnonzero(status), np.flatnonzero(~status)
    k, q = w.shots, w.queries
    # each episode: a random permutation of the positives / negatives, first k support then q query
    pp = np.argsort(rng.random((w.episodes, len(pos))), axis=1)[:, : k + q]
    nn = np.argsort(rng.random((w.episodes, len(neg))), axis=1)[:, : k + q]
    pp, nn = pos[pp], neg[nn]
    support = np.concatenate([pp[:, :k], nn[:, :k]], axis=1)
    qp, qn = pp[:, k:], nn[:, k:]
    difficulty = rng.normal(0, w.sd_difficulty, w.patients)
    support_effect = rng.normal(0, w.sd_support, w.patients)
    luck = support_effect[support].mean(axis=1) + rng.normal(0, w.sd_episode, w.episodes)
    matrices = []
    for m, n_seeds in enumerate(seeds):
        effect = effects[m] if m < len(effects) else 0.0
        interaction = rng.normal(0, w.sd_interaction, w.patients)
        rows = []
        for _ in range(n_seeds):
            sep = w.delta + effect + rng.normal(0, w.sd_seed) + luck
            sp = sep[:, None] + difficulty[qp] + interaction[qp] + rng.normal(0, 1, qp.shape)
            sn = difficulty[qn] + interaction[qn] + rng.normal(0, 1, qn.shape)
            diff = sp[:, :, None] - sn[:, None, :]
            rows.append(((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2)))
        matrices.append(np.array(rows))
    ids = np.array([f"p{i}" for i in range(w.patients)])
    return matrices, [list(ids[r]) for r in support], [list(ids[np.r_[a, b]]) for a, b in zip(qp, qn, strict=True)]
