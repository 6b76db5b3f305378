"""`cxr compare` with seed groups, Holm families, references and its refusals (synthetic evaluations)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from test_cli_compare import CLASSES, N, _evaluation
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.engine.compare import CompareConfig, compare
from cxr_tools.errors import DataError
from cxr_tools.eval.metrics import holm

runner = CliRunner()
BASE = np.random.default_rng(1).uniform(0.55, 0.75, N)


def _run(tmp, name, seed, values, *, lr=0.01, **fields):
    """A run directory with config.yaml and an evaluation in RUN/eval."""
    run = tmp / name
    run.mkdir()
    config = {"data": "cache", "seed": seed, "output": str(run), "lr": lr, "device": "cpu", "log_every": 7 + seed}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return _evaluation(run / "eval", "maml", values, run=str(run), **fields)


@pytest.fixture
def seeds(tmp_path):
    rng = np.random.default_rng(2)
    offsets = (0.10, 0.13, 0.07)  # the seeds disagree
    runs = [_run(tmp_path, f"maml-s{i}", i, BASE + o + rng.normal(0, 0.01, N)) for i, o in enumerate(offsets)]
    scratch = _evaluation(tmp_path / "scratch", "scratch", BASE, kind=None)
    return tmp_path, runs, scratch


def test_runs_differing_only_in_seed_are_grouped_and_averaged(seeds):
    _tmp, runs, scratch = seeds
    result = compare(CompareConfig(inputs=(*[r.parent for r in runs], scratch)))
    assert [len(r.eval_dirs) for r in result.rows] == [3, 1]
    group = result.rows[0]
    assert group.name.endswith("[seeds 0, 1, 2]") and group.interval == "episodes+patients+seeds"
    res = runner.invoke(app, ["compare", *[str(r) for r in runs]], terminal_width=200)
    assert res.exit_code == 0 and "[seeds 0, 1, 2]" in res.stdout and "between-seed variance" in res.stdout
    tables = [pd.read_csv(r / "episodes.csv").groupby("episode")["auc"].mean().to_numpy() for r in runs]
    averaged = np.mean(tables, axis=0)
    assert group.mean == pytest.approx(averaged.mean())
    single = compare(CompareConfig(inputs=(runs[0],)))
    assert group.ci95 > 2 * single.rows[0].ci95  # the between-seed spread (0.03) dominates the episode CI
    assert group.diff is None and result.rows[1].diff == pytest.approx(np.mean(BASE - averaged))

    apart = compare(CompareConfig(inputs=(*runs, scratch), auto_group=False))
    assert len(apart.rows) == 4 and all(len(r.eval_dirs) == 1 for r in apart.rows)
    tests = [t for t in apart.tests if t.scope == "overall"]
    assert len(tests) == 6  # all pairs
    assert len(apart.tests) == 6 * (1 + len(CLASSES))  # overall and per class: one Holm family
    assert [t.p_value for t in apart.tests] == pytest.approx(holm([t.p_raw for t in apart.tests]))


def test_other_settings_are_not_grouped_and_explicit_groups_are(seeds):
    tmp, runs, scratch = seeds
    other = _run(tmp, "maml-lr", 0, BASE + 0.1, lr=0.1)
    result = compare(CompareConfig(inputs=(*runs, other)))
    assert sorted(len(r.eval_dirs) for r in result.rows) == [1, 3]
    rerun = _run(tmp, "maml-again", 0, BASE + 0.1)  # the same seed again: a rerun, not another seed
    result = compare(CompareConfig(inputs=(runs[0], rerun)))
    assert [len(r.eval_dirs) for r in result.rows] == [1, 1]
    res = runner.invoke(app, ["compare", str(scratch), "--group", f"mine={runs[0]},{other}", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert {r["name"] for r in rows} == {"mine", "run:scratch"}
    bad = runner.invoke(app, ["compare", str(scratch), "--group", f"mine={runs[0]}"])
    assert bad.exit_code == 1 and "NAME=RUN,RUN" in bad.stderr


def test_reference_per_class_families_and_identical_scores(tmp_path):
    a = _evaluation(tmp_path / "a", "maml", BASE + 0.1)
    b = _evaluation(tmp_path / "b", "prototype", BASE + 0.05)
    same = _evaluation(tmp_path / "same", "scratch", BASE)
    twin = _evaluation(tmp_path / "twin", "finetune-head", BASE)
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(a), str(b), str(same), str(twin), "--reference", "run:scratch",
                              "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / "comparison.json").read_text())
    assert data["reference"] == "run:scratch"
    overall = [t for t in data["tests"] if t["scope"] == "overall"]
    assert len(overall) == 3 and all(t["b"] == "run:scratch" for t in overall)
    identical = next(t for t in overall if t["a"] == "run:finetune-head")
    assert identical["p_raw"] == 1.0 and identical["p_value"] == 1.0 and "identical" in identical["note"]
    for cls in CLASSES:
        assert len([t for t in data["tests"] if t["scope"] == cls]) == 3
    family = data["tests"]  # overall and per class together: one Holm family
    assert [t["p_value"] for t in family] == pytest.approx(holm([t["p_raw"] for t in family]))
    md = (out / "comparison.md").read_text()
    assert "1 (identical on every episode)" in md and "p = 0.0" not in md and "| 0.000 |" not in md
    assert "Against run:scratch" in res.stdout
    csv = pd.read_csv(out / "comparison.csv")
    assert {f"{c}_p_value" for c in CLASSES} <= set(csv.columns)


def test_leak_and_budget_are_visible_everywhere(tmp_path):
    clean = _evaluation(tmp_path / "clean", "maml", BASE + 0.1)
    leak = _evaluation(tmp_path / "leak", "prototype", BASE, leak="ancestor sup trained on class D")
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(clean), str(leak), "-o", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "LEAK" in res.stdout and "ancestor sup trained on class D" in res.stdout and "steps=5" in res.stdout
    csv = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    assert list(csv[csv["name"] == "run:prototype"]["leak"]) == ["ancestor sup trained on class D"]
    assert "LEAK" in (out / "comparison.md").read_text()
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert next(r for r in rows if r["name"] == "run:prototype")["leak"]


def test_refuses_old_episode_lists_and_other_caches_naming_the_difference(tmp_path):
    new = _evaluation(tmp_path / "new", "maml", BASE)
    old = _evaluation(tmp_path / "old", "scratch", BASE, episode_list_version=None)
    with pytest.raises(DataError, match="old episode lists") as err:
        compare(CompareConfig(inputs=(new, old)))
    assert "Re-evaluate" in err.value.hint
    other = _evaluation(tmp_path / "other", "scratch", BASE, cache_manifest_hash="beef",
                        cache_preprocessing={"size": 48, "clahe": True})  # fmt: skip
    res = runner.invoke(app, ["compare", str(new), str(other)])
    assert res.exit_code == 1
    assert "different caches" in res.stderr and "size: 32 vs 48" in res.stderr and "clahe: False vs True" in res.stderr


def test_two_seed_groups_of_one_method_are_not_significant(tmp_path):
    """Each run of one method moves by its seed (sd 0.03); the groups' gap is seed noise, not a difference."""
    rng = np.random.default_rng(5)
    runs = []
    for i in range(4):
        values = BASE + 0.1 + rng.normal(0, 0.03) + rng.normal(0, 0.01, N)
        runs.append(_run(tmp_path, f"maml-s{i}", i, values))
    groups = [f"A={runs[0]},{runs[1]}", f"B={runs[2]},{runs[3]}"]
    result = compare(CompareConfig(inputs=(), groups=tuple(groups), auto_group=False))
    overall = next(t for t in result.tests if t.scope == "overall")
    naive = stats.ttest_rel(*[np.mean([_episode_auc(r) for r in pair], axis=0) for pair in (runs[:2], runs[2:])])
    assert naive.pvalue < 0.05  # the old test: "significant"
    assert not overall.significant and overall.low < 0 < overall.high
    assert all(r.interval == "episodes+patients+seeds" for r in result.rows)


def _episode_auc(eval_dir):
    return pd.read_csv(eval_dir / "episodes.csv").groupby("episode")["auc"].mean().to_numpy()
