"""The phantom is learnable (each finding vs "No Finding") and not separable by mean brightness alone."""

from __future__ import annotations

import numpy as np
import pytest
from script_modules import REPO, load_script

from cxr_tools.data.labels import NIH_LABELS

_PATH = REPO / "benchmarks" / "synthetic_learnability.py"


@pytest.mark.slow
def test_each_finding_is_learnable_but_not_by_brightness():
    mod = load_script(_PATH, "synthetic_learnability")
    scores = mod.run(patients=400, size=64, px=32, seed=0)
    print("\n" + mod.table(scores))
    assert [s.finding for s in scores] == list(NIH_LABELS)  # every finding has enough examples to score
    lr = np.array([s.auc_logreg for s in scores])
    bright = np.array([s.auc_mean_brightness for s in scores])
    assert (lr > 0.68).all(), {s.finding: round(s.auc_logreg, 3) for s in scores}
    assert lr.mean() > 0.78
    assert lr.min() < 0.9  # not trivial: some findings stay hard for a linear model
    assert np.abs(bright - 0.5).max() < 0.15
    assert np.median(np.abs(bright - 0.5)) < 0.06
    assert (lr - np.abs(bright - 0.5) - 0.5 > 0.15).all()  # pixels beat brightness by far, finding by finding
