"""The classic N-way K-shot setting on real images: single-label class folders without "No Finding",
so the negatives of an episode are images of the other classes, and two meta-val classes, too few for 2-way
episodes with negatives. Data: scikit-learn's handwritten digits as class folders (digits_fixtures.py).

* Meta-training must beat a random initialisation adapted with the same budget on the unseen meta-test classes.
* A deliberately collapsing configuration (a meta learning rate 1000 times too high) must say so: warning,
  run.json, ``cxr runs``, exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from digits_fixtures import SPLIT, digits_cache

from cxr_tools import paths

COMMON = ["--meta-split", SPLIT, "--ways", "2", "--shots", "5", "--first-order", "--engine", "func"]
COMMON += ["--device", "cpu", "--threads", "1", "-q"]


def cxr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxr_tools", *args], capture_output=True, text=True, timeout=600, env={**os.environ}
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return digits_cache(tmp_path_factory.mktemp("digits"), size=16)


@pytest.mark.slow
def test_a_collapsing_run_says_so_everywhere(cache):
    run = paths.runs_root() / "meta-train" / "collapsed"
    args = ["meta-train", str(cache), "-o", str(run), *COMMON, "--backbone", "conv4-tiny", "--queries", "5"]
    args += ["--meta-lr", "1.0", "--episodes", "80", "--meta-batch", "2", "--val-every", "10", "--val-episodes", "10"]
    res = cxr(*args)
    assert res.returncode == 1, res.stderr
    assert "Meta-training collapsed to the label prior" in res.stderr  # the warning, when it happened
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Meta-training collapsed to the label prior at meta-step") and "not a usable model" in last
    # validation ran on 1-way episodes (two meta-val classes cannot form 2-way ones with negatives), and said so
    assert "Meta-validation uses 1-way episodes" in res.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["validation"]["ways"] == 1 and info["validation"]["requested_ways"] == 2
    collapse = info["collapse"]
    assert collapse["beats_prior_on_validation"] is False
    assert abs(collapse["loss"] - collapse["prior_loss"]) < 0.05 and abs(collapse["prior_loss"] - 0.6365) < 1e-3
    listing = cxr("runs", "--kind", "meta-train", "--json")
    assert listing.returncode == 0 and "COLLAPSED at step" in listing.stdout, listing.stdout


def _overall_auc(res: subprocess.CompletedProcess[str]) -> float:
    assert res.returncode == 0, res.stderr
    return float(json.loads(res.stdout)["overall"]["auc"]["mean"])


#: What meta-training must gain over a random initialisation adapted with the same inner loop, in mean AUC over
#: the same 60 meta-test episodes of the three unseen classes (measured: 0.918 vs 0.868, +0.050; docs/science.md).
MARGIN = 0.02


@pytest.mark.slow
def test_classic_meta_training_beats_random_init_on_unseen_classes(cache, tmp_path):
    run = tmp_path / "maml"
    args = ["meta-train", str(cache), "-o", str(run), *COMMON, "--backbone", "conv4", "--queries", "5"]
    # 100 meta-steps of 2 episodes at 3x the default meta-lr (still 3x below the 1e-3 that memorises the five
    # meta-train classes): +0.050, +0.051, +0.038 with training seeds 0, 1, 2. The defaults' 100 meta-steps of 4
    # episodes (twice the tasks) measured +0.036, +0.001, +0.017: a margin only seed 0 met.
    args += ["--episodes", "200", "--meta-batch", "2", "--meta-lr", "3e-4", "--seed", "0"]
    args += ["--val-every", "25", "--val-episodes", "10"]
    res = cxr(*args)
    assert res.returncode == 0, res.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["collapse"] is None and info["validation"]["ways"] == 1
    episodes = ["--episodes", "60", "--queries", "5", "--device", "cpu", "--threads", "1", "--no-plots", "--json"]
    maml = _overall_auc(cxr("evaluate", str(run), "-d", str(cache), *episodes, "-q"))
    scratch = _overall_auc(
        cxr(
            "evaluate",
            "--method",
            "scratch",
            "--match",
            str(run),
            "-d",
            str(cache),
            "--meta-split",
            SPLIT,
            "-o",
            str(tmp_path / "s"),
            *episodes,
        )
    )
    assert maml >= scratch + MARGIN, f"meta-test AUC: MAML {maml:.3f}, random init with its budget {scratch:.3f}"
