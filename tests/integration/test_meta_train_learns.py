"""Does meta-training learn? On synthetic phantoms, MAML's initialisation adapts to the meta-test classes better
than a randomly initialised model adapted with the same inner loop, on the same fixed episodes (issue 5 item 5).

A small configuration of ``benchmarks/meta_learning_check.py`` (the full figures are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "meta_learning_check.py"


def _check_module():
    name = "cxr_meta_learning_check"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.slow
def test_maml_beats_random_init_on_meta_test_classes(tmp_path):
    check = _check_module()
    cfg = check.CheckConfig(
        workdir=tmp_path, patients=600, size=64, backbone="conv4-tiny", inner_lr=0.1, meta_lr=0.005,
        episodes=240, test_episodes=100, seed=0, threads=1,
    )  # fmt: skip
    result = check.run_check(cfg)
    report = "\n".join(result.lines())
    assert result.n_episodes == 100, report
    assert result.maml_auc > result.scratch_auc, report
    assert result.diff > 0, report
