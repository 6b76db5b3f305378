"""Benchmark plans over several episode shapes (the MetaChest grid): ``shapes`` / ``seen_ways`` / lists of
``ways``, one column per shape and shot count, generalized columns compared on ``auc-harmonic``, and plans of one
standard shape left exactly as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxr_tools.benchmark.plan import PlanError, load_plan
from cxr_tools.benchmark.steps import expand
from cxr_tools.cli.benchmark import command_flags

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "benchmark"


def _load(tmp_path: Path, **changes):
    """The checked plan of a small two-method plan with ``changes``."""
    base = {"cache": "cache", "output": "out", "shots": [1, 5], "seeds": 1, "methods": {"pixels": {}, "maml": {}}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**base, **changes}, sort_keys=False))
    return load_plan(tmp_path / "plan.yaml", command_flags())


def _steps(tmp_path: Path, **changes):
    return {s.id: s for s in expand(_load(tmp_path, **changes))}


def _flag(step, name):
    return step.args[step.args.index(name) + 1] if name in step.args else None


def test_the_metachest_grid_is_the_papers_shapes_and_shots():
    plan = load_plan(EXAMPLES / "metachest.yaml", command_flags())
    totals = sorted({w + s for w, s in plan.settings})
    assert totals == [3, 4, 5] and len(plan.settings) == 12  # n-way 3..5, n-unseen 1..n-way
    assert all(1 <= w <= 5 for w, _ in plan.settings) and plan.shots == (1, 5, 15, 30) and plan.queries == 30
    assert plan.meta_split == "metachest"
    steps = expand(plan)
    compares = [s for s in steps if s.command == "compare"]
    assert len(compares) == 12 * 4
    for c in compares:
        assert _flag(c, "--metric") == ("auc-harmonic" if c.seen_ways else "auc")
    trains = [s for s in steps if s.command == "train"]
    assert len(trains) == 3  # one supervised run per seed serves every shape and shot count
    metas = [s for s in steps if s.command == "meta-train"]
    assert len(metas) == 3 * 3  # ProtoNet-ML: one 30-shot run per seed and episode size (3, 4, 5 classes)


def test_grid_columns_name_the_shape_and_pass_seen_ways(tmp_path):
    steps = _steps(tmp_path, shapes=[[1, 1], [2, 0]])
    ev = steps["evaluate/1way-1seen-5shot/pixels"]
    assert (_flag(ev, "--ways"), _flag(ev, "--seen-ways"), _flag(ev, "--shots")) == ("1", "1", "5")
    assert _flag(steps["evaluate/2way-5shot/pixels"], "--seen-ways") is None
    assert _flag(steps["compare/1way-1seen-1shot"], "--metric") == "auc-harmonic"
    assert _flag(steps["compare/2way-1shot"], "--metric") == "auc"
    # a MAML head has one slot per class: 1 + 1 and 2 + 0 share the 2-way meta-training of each shot count
    metas = sorted(s for s in steps if s.startswith("meta-train/"))
    assert metas == ["meta-train/maml-conv4-2way-1shot-seed0", "meta-train/maml-conv4-2way-5shot-seed0"]
    assert steps["evaluate/1way-1seen-1shot/maml/seed0"].deps == ("meta-train/maml-conv4-2way-1shot-seed0",)


def test_seen_ways_and_ways_lists_form_a_product(tmp_path):
    plan = _load(tmp_path, ways=[2, 3], seen_ways=[0, 1])
    assert plan.settings == ((2, 0), (2, 1), (3, 0), (3, 1))


def test_a_plan_of_one_standard_shape_keeps_its_names(tmp_path):
    steps = _steps(tmp_path)
    assert "evaluate/1shot/pixels" in steps and "compare/5shot" in steps
    assert "meta-train/maml-conv4-1shot-seed0" in steps


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"shapes": [[2, 1]], "ways": 2}, "both 'shapes' and 'ways'"),
        ({"shapes": [[2]]}, "no [ways, seen_ways] pair"),
        ({"shapes": [[0, 1]]}, "shapes (ways)"),
        ({"shapes": [[2, 1], [2, 1]]}, "repeats a pair"),
        ({"seen_ways": [-1]}, "seen_ways"),
        ({"evaluate": {"seen_ways": 2}}, "set by the plan itself"),
    ],
)
def test_bad_shapes_are_one_line_naming_the_key(tmp_path, changes, needle):
    with pytest.raises(PlanError) as info:
        _load(tmp_path, **changes)
    assert needle in info.value.message + (info.value.hint or "")
