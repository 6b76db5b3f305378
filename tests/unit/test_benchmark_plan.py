"""``cxr benchmark``: plan validation (one line naming the key and the file, exit 2) and the expansion into steps
(training shared across shot counts, one episode list per shot count, fingerprints that redo only what changed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cxr_tools.benchmark.plan import PlanError, load_plan
from cxr_tools.benchmark.steps import expand
from cxr_tools.cli.app import app
from cxr_tools.cli.benchmark import command_flags

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "benchmark"


def _plan(tmp_path: Path, **changes) -> Path:
    data = {
        "cache": "cache",
        "output": "out",
        "shots": [1, 5],
        "seeds": 2,
        "methods": {"pixels": {}, "linear-probe": {}, "maml": {}, "maml-siamese": {"method": "maml-from-siamese"}},
        "train": {"epochs": 2},
        "meta_train": {"episodes": 40, "first_order": True},
    }
    data.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _steps(path: Path):
    return {s.id: s for s in expand(load_plan(path, command_flags()))}


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"shotz": [1]}, ["'shotz'", "Did you mean 'shots'"]),
        ({"methods": {"matchnet": {}}}, ["Unknown method 'matchnet'", "methods.matchnet"]),
        ({"methods": {"protonet": {}}}, ["'first_order' reaches method 'protonet'", "fomaml"]),
        ({"methods": {"protonet": {"meta_train": {"algorithm": "maml"}}}}, ["algorithm", "set by the plan itself"]),
        ({"methods": {"maml": {"meta_train": {"inner_lrr": 0.1}}}}, ["methods.maml.meta_train.inner_lrr", "inner_lr"]),
        ({"train": {"output": "x"}}, ["'train.output'", "set by the plan itself"]),
        ({"evaluate": {"episodes": 3}}, ["'evaluate.episodes'", "set by the plan itself"]),
        ({"train": {"epochs": 0}}, ["train.epochs", "Invalid value"]),
        ({"meta_train": {"first_order": "yes"}}, ["meta_train.first_order", "true or false"]),
        ({"methods": {"pixels": {"train": {"epochs": 1}}}}, ["methods.pixels.train", "runs no `cxr train`"]),
        ({"methods": {"scratch": {"match": "pixels"}}}, ["methods.scratch.match", "MAML-kind"]),
        ({"reference": "nobody"}, ["'reference'", "nobody"]),
        ({"slurm": {"partitoin": "x"}}, ["'slurm.partitoin'", "partition"]),
    ],
)
def test_a_bad_plan_is_one_line_naming_the_key_and_the_file_exit_2(tmp_path, changes, needles):
    path = _plan(tmp_path, **changes)
    with pytest.raises(PlanError):
        load_plan(path, command_flags())
    res = runner.invoke(app, ["benchmark", "status", str(path)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0], res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_training_is_shared_across_shots_and_methods_and_meta_training_is_per_shot(tmp_path):
    steps = _steps(_plan(tmp_path, methods={"linear-probe": {}, "fine-tune": {}, "maml": {}, "pixels": {}}))
    trains = sorted(i for i, s in steps.items() if s.command == "train")
    assert trains == ["train/supervised-conv4-seed0", "train/supervised-conv4-seed1"]  # shared by both methods
    metas = sorted(i for i, s in steps.items() if s.command == "meta-train")
    assert metas == [f"meta-train/maml-conv4-{k}shot-seed{s}" for k in (1, 5) for s in (0, 1)]
    lp = steps["evaluate/5shot/linear-probe/seed1"]
    assert lp.deps == ("train/supervised-conv4-seed1",) and "--shots" in lp.args
    assert "evaluate/5shot/pixels" in steps and "evaluate/5shot/pixels/seed0" not in steps  # no training: once
    # one episode list per shot count: every evaluation uses the plan's episode seed, whatever its training seed
    seeds = {s.args[s.args.index("--seed") + 1] for s in steps.values() if s.command == "evaluate"}
    assert seeds == {"0"}
    cmp5 = steps["compare/5shot"]
    assert set(cmp5.deps) == {i for i in steps if i.startswith("evaluate/5shot/")}
    assert "--group" in cmp5.args and "--no-auto-group" in cmp5.args


def test_train_shots_meta_trains_once_and_siamese_runs_are_shared(tmp_path):
    methods = {"mfs": {"method": "maml-from-siamese", "train_shots": 5}, "proto": {"method": "siamese-prototype"}}
    steps = _steps(_plan(tmp_path, methods=methods, reference="proto"))
    assert sorted(i for i, s in steps.items() if s.command == "meta-train") == [
        "meta-train/maml-from-siamese-conv4-5shot-seed0",
        "meta-train/maml-from-siamese-conv4-5shot-seed1",
    ]
    siamese = sorted(i for i, s in steps.items() if s.command == "train-siamese")
    assert siamese == ["train-siamese/siamese-conv4-seed0", "train-siamese/siamese-conv4-seed1"]
    assert steps["evaluate/1shot/proto/seed0"].deps == ("train-siamese/siamese-conv4-seed0",)
    assert steps["meta-train/maml-from-siamese-conv4-5shot-seed0"].deps == ("train-siamese/siamese-conv4-seed0",)


def test_protonet_meta_trains_per_shot_and_transfer_fine_tunes_the_shared_supervised_run(tmp_path):
    methods = {"protonet": {}, "transfer": {"evaluate": {"steps": 7}}, "fine-tune": {}}
    steps = _steps(_plan(tmp_path, methods=methods, meta_train={"episodes": 40}))
    proto = steps["meta-train/protonet-conv4-5shot-seed0"]
    assert proto.args[proto.args.index("--algorithm") + 1] == "protonet" and "--first-order" not in proto.args
    ev = steps["evaluate/5shot/protonet/seed0"]
    assert ev.args[ev.args.index("--method") + 1] == "prototype" and ev.deps == (proto.id,)
    # MetaChest's transfer learning: the fine-tune row's supervised run, a fresh head, 100 steps at lr 0.005
    tl, ft = steps["evaluate/5shot/transfer/seed1"], steps["evaluate/5shot/fine-tune/seed1"]
    assert tl.deps == ft.deps == ("train/supervised-conv4-seed1",)
    assert tl.args[tl.args.index("--method") + 1] == "finetune"
    assert [tl.args[i + 1] for i, a in enumerate(tl.args) if a == "--steps"] == ["100", "7"]  # the plan's wins
    assert tl.args[tl.args.index("--lr") + 1] == "0.005" and "--lr" not in ft.args


def test_a_changed_setting_changes_the_fingerprints_downstream_only(tmp_path):
    before = _steps(_plan(tmp_path))
    after = _steps(_plan(tmp_path, train={"epochs": 3}))
    changed = {i for i in before if before[i].fingerprint != after[i].fingerprint}
    assert changed == {
        *(f"train/supervised-conv4-seed{s}" for s in (0, 1)),
        *(f"evaluate/{k}shot/linear-probe/seed{s}" for k in (1, 5) for s in (0, 1)),
        "compare/1shot",
        "compare/5shot",
    }
    same_device = _steps(_plan(tmp_path, device="cuda", threads=4))  # bookkeeping: never redoes a step
    assert all(same_device[i].fingerprint == before[i].fingerprint for i in before)


@pytest.mark.parametrize("name", ["phantoms.yaml", "nih.yaml", "metachest.yaml", "metachest-phantoms.yaml"])
def test_the_shipped_examples_are_valid_plans(name):
    plan = load_plan(EXAMPLES / name, command_flags())
    assert plan.methods and expand(plan)


def test_scratch_matches_the_first_seed_evaluation_of_its_method_and_waits_for_it(tmp_path):
    methods = {"scratch": {"match": "maml"}, "maml": {"evaluate": {"adapt_steps": 9}}}
    steps = _steps(_plan(tmp_path, methods=methods))
    order = list(steps)
    for k in (1, 5):
        scratch, matched = steps[f"evaluate/{k}shot/scratch"], steps[f"evaluate/{k}shot/maml/seed0"]
        assert scratch.args[scratch.args.index("--match") + 1] == str(matched.output)  # its settings: 9 steps
        assert scratch.deps == (matched.id,) and order.index(matched.id) < order.index(scratch.id)
    # the matched evaluation's settings change the scratch step, nothing else of it
    before = _steps(_plan(tmp_path, methods={"scratch": {"match": "maml"}, "maml": {}}))
    changed = {i for i in before if before[i].fingerprint != steps[i].fingerprint}
    assert changed == {
        *(f"evaluate/{k}shot/{m}" for k in (1, 5) for m in ("scratch", "maml/seed0", "maml/seed1")),
        "compare/1shot",
        "compare/5shot",
    }


def test_encoder_rows_evaluate_their_encoders_without_training(tmp_path, monkeypatch):
    (tmp_path / "enc").mkdir()
    monkeypatch.chdir(tmp_path)
    methods = {
        "pixels": {},
        "rad": {"method": "encoder-linear-probe", "backbones": ["rad-dino", "hf:./enc"]},
        "proto": {"method": "encoder-prototype", "backbones": ["dinov2-small"]},
    }
    steps = _steps(_plan(tmp_path, methods=methods))
    flags = command_flags()
    rad = steps["evaluate/1shot/rad-rad-dino"]
    assert rad.deps == () and rad.args[:2] == ("--backbone", "rad-dino")
    assert rad.args[rad.args.index("--method") + 1] == "linear-probe"
    local = steps["evaluate/5shot/rad-enc"]
    assert local.args[1] == f"hf:{tmp_path / 'enc'}"  # made absolute, as the cache path is
    proto = steps["evaluate/1shot/proto"]
    assert proto.args[proto.args.index("--method") + 1] == "prototype"
    assert not [s for s in steps if s.startswith(("train", "meta-train"))]
    with pytest.raises(PlanError, match="must list foundation encoders; not: conv4"):
        load_plan(_plan(tmp_path, methods={"x": {"method": "encoder-prototype", "backbones": ["conv4"]}}), flags)
    with pytest.raises(PlanError, match="must list foundation encoders"):
        load_plan(_plan(tmp_path, methods={"x": {"method": "encoder-prototype"}}), flags)
