"""Model lineage end to end: real tiny trainings chained with --init / --backbone-from, then evaluate.

No meta-test class or patient may appear anywhere in a model's ancestry; a chain that starts from a supervised
run on all classes, or on the whole patient split, is refused with the ancestor's name; --classes base chains
pass; a copied run whose parents are gone still answers the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from meta_train_fixtures import tiny_cache, tiny_config

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.splits.meta import meta_split_pools, parse_meta_split
from cxr_tools.data.splits.patients import patients_of
from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
from cxr_tools.engine.meta_train import meta_train
from cxr_tools.engine.train import TrainConfig, train
from cxr_tools.errors import DataError
from cxr_tools.models import read_model_meta
from cxr_tools.models.lineage import PATIENTS_FILE, load_patient_sets

torch.set_num_threads(1)
SPLIT = "train=A,B;val=C,D;test=E,F"
EVAL = {"episodes": 2, "shots": 2, "queries": 3, "steps": 3, "device": "cpu", "plots": False, "meta_split": SPLIT}


def _supervised(cache: Path, out: Path, classes: tuple[str, ...], **kw) -> Path:
    cfg = TrainConfig(
        cache=cache, output=out, model="conv4-tiny", classes=classes, meta_split=SPLIT, epochs=1, max_steps=2,
        batch_size=8, augment=False, device="cpu", threads=1, schedule="none", seed=1, **kw,
    )  # fmt: skip
    assert train(cfg).status == "completed"
    return out


def _maml(cache: Path, out: Path, init: Path) -> Path:
    cfg = tiny_config(cache, out, init=str(init), meta_split=SPLIT, episodes=2, val_episodes=0)
    assert meta_train(cfg).status == "completed"
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    cache = tiny_cache(tmp)
    runs = {
        "sup_all": _supervised(cache, tmp / "sup_all", ()),
        "sup_base": _supervised(cache, tmp / "sup_base", ("base",)),
    }
    runs["maml_all"] = _maml(cache, tmp / "maml_all", runs["sup_all"])
    runs["maml_base"] = _maml(cache, tmp / "maml_base", runs["sup_base"])
    return tmp, cache, runs


def _pools(cache: Path, seed: int = 0) -> dict:
    reader = open_cache(cache)
    return meta_split_pools(reader.index, reader.labels, parse_meta_split(SPLIT, reader.labels), seed=seed)


def test_every_run_records_its_classes_pool_patients_and_parents(chain):
    _, cache, runs = chain
    lineage = read_model_meta(runs["maml_base"])["lineage"]
    assert lineage["run"] == "maml_base" and lineage["training"] == "maml"
    assert lineage["classes"] == ["A", "B", "C", "D"]  # meta-train + meta-val classes
    assert lineage["pool"]["pool_seed"] == 0 and lineage["pool"]["meta_split"]["test"] == ["E", "F"]
    assert lineage["cache"]["manifest_hash"] == open_cache(cache).manifest_hash
    (parent,) = lineage["parents"]
    assert parent["run"] == "sup_base" and parent["training"] == "supervised" and parent["classes"] == ["A", "B"]
    assert parent["pool"] == {"name": "meta-train", "meta_split": lineage["pool"]["meta_split"], "pool_seed": 0}
    # the supervised run read the train split of the meta-train pool: exactly those patients are recorded
    reader = open_cache(cache)
    expected = patients_of(reader.index, _pools(cache)["train"])
    sets = load_patient_sets(runs["maml_base"] / "model")
    assert sets[parent["patients"]["sha256"]] == expected and parent["patients"]["count"] == len(expected)
    assert set(sets) == {lineage["patients"]["sha256"], parent["patients"]["sha256"]}
    everything = read_model_meta(runs["sup_all"])["lineage"]
    assert everything["pool"]["name"] == "all" and everything["classes"] == ["A", "B", "C", "D", "E", "F"]


def test_a_chain_from_a_supervised_run_on_all_classes_is_refused(chain):
    _, cache, runs = chain
    with pytest.raises(DataError, match=r"ancestor run 'sup_all' .*meta-test class\(es\) E, F.*--allow-leak"):
        evaluate(EvaluateConfig(data=cache, run=runs["maml_all"], **EVAL))
    assert not (runs["maml_all"] / "eval").exists()


def test_a_chain_from_a_base_supervised_run_is_accepted(chain):
    _, cache, runs = chain
    result = evaluate(EvaluateConfig(data=cache, run=runs["maml_base"], **EVAL))
    assert result.leak is None
    assert json.loads((result.output / "summary.json").read_text())["leak"] is None


def test_a_run_on_the_whole_patient_split_is_refused_with_the_shared_patients(chain):
    tmp, cache, _ = chain
    run = _supervised(cache, tmp / "sup_ab", ("A", "B"))  # base classes, but every image of the train split
    test_patients = patients_of(open_cache(cache).index, _pools(cache)["test"])
    with pytest.raises(DataError, match=rf"run 'sup_ab' .*trained on {len(test_patients)} patient\(s\) of the meta"):
        evaluate(EvaluateConfig(data=cache, run=run, **EVAL))


def test_allow_leak_evaluates_and_marks_the_summary(chain, tmp_path):
    _, cache, runs = chain
    result = evaluate(EvaluateConfig(data=cache, run=runs["maml_all"], output=tmp_path / "e", allow_leak=True, **EVAL))
    assert result.leak is not None and "sup_all" in result.leak and "E, F" in result.leak
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["leak"] == result.leak


def test_a_copied_run_without_its_parents_answers_the_same(chain, tmp_path):
    _, cache, runs = chain
    copies = {name: tmp_path / "elsewhere" / name for name in ("maml_all", "maml_base")}
    for name, dest in copies.items():
        shutil.copytree(runs[name] / "model", dest / "model")
    hidden = tmp_path / "hidden"
    for name in ("sup_all", "sup_base"):  # the parents disappear
        shutil.move(runs[name], hidden / name)
    try:
        with pytest.raises(DataError, match=r"ancestor run 'sup_all'.*E, F"):
            evaluate(EvaluateConfig(data=cache, run=copies["maml_all"], **EVAL))
        assert evaluate(EvaluateConfig(data=cache, run=copies["maml_base"], **EVAL)).leak is None
        (copies["maml_base"] / "model" / PATIENTS_FILE).unlink()
        with pytest.raises(DataError, match=r"run 'maml_base'.*missing or altered.*Retrain"):
            evaluate(EvaluateConfig(data=cache, run=copies["maml_base"], overwrite=True, **EVAL))
    finally:
        for name in ("sup_all", "sup_base"):
            shutil.move(hidden / name, runs[name])


def test_pool_seed_chooses_the_pool_and_evaluate_follows_the_recorded_seed(chain):
    tmp, cache, _ = chain
    run = _supervised(cache, tmp / "sup_seed1", ("base",), pool_seed=1)
    lineage = read_model_meta(run)["lineage"]
    reader = open_cache(cache)
    assert lineage["pool"]["pool_seed"] == 1
    assert load_patient_sets(run / "model")[lineage["patients"]["sha256"]] == patients_of(
        reader.index, _pools(cache, seed=1)["train"]
    )
    result = evaluate(EvaluateConfig(data=cache, run=run, **EVAL))  # the run's seed: its meta-test pool is clean
    assert result.leak is None and json.loads((result.output / "summary.json").read_text())["pool_seed"] == 1
    with pytest.raises(DataError, match=r"patient\(s\) of the meta-test pool"):
        evaluate(EvaluateConfig(data=cache, run=run, pool_seed=0, output=tmp / "seed0", **EVAL))


def test_a_siamese_run_records_its_backbone_parent(chain, tmp_path):
    from cxr_tools.engine.train_siamese import SiameseConfig, train_siamese

    _, cache, runs = chain
    cfg = SiameseConfig(
        cache=cache, output=tmp_path / "siam", backbone="conv4-tiny", backbone_from=runs["sup_all"],
        embedding_dim=16, classes=("base",), meta_split=SPLIT, epochs=1, max_steps=1, batch_size=8, val_pairs=8,
        pairs_per_epoch=16, device="cpu", threads=1, schedule="none", seed=2,
    )  # fmt: skip
    assert train_siamese(cfg).status == "completed"
    lineage = read_model_meta(tmp_path / "siam")["lineage"]
    assert lineage["classes"] == ["A", "B"] and lineage["pool"]["name"] == "meta-train"
    assert [p["run"] for p in lineage["parents"]] == ["sup_all"]
    with pytest.raises(DataError, match=r"ancestor run 'sup_all'"):
        evaluate(EvaluateConfig(data=cache, run=tmp_path / "siam", **EVAL))
