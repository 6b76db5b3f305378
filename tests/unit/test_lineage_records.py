"""models/lineage.py on plain records: what is recorded, copied from parents, and found as a leak."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from lineage_helpers import META
from lineage_helpers import make_model as _model

from cxr_tools.data.splits.patients import patients_of
from cxr_tools.models.lineage import (
    PATIENTS_FILE,
    find_leak,
    load_patient_sets,
    patients_digest,
    read_lineage,
    recorded_pool_seed,
    trained_classes,
    write_lineage,
)


def test_patients_digest_ignores_order_and_duplicates_and_compares_strings():
    ids, digest = patients_digest(["p2", "p1", "p2", 7])
    assert ids == ["7", "p1", "p2"] and digest == patients_digest(["7", "p2", "p1"])[1]
    assert digest != patients_digest(["p1", "p2"])[1]


def test_patients_of_gives_sorted_string_ids_of_the_rows():
    index = pd.DataFrame({"row": [0, 1, 2, 3], "patient_id": [12, 5, 12, 9]})
    assert patients_of(index, [0, 2], [3]) == ["12", "9"]


def test_trained_classes_of_each_kind():
    assert trained_classes(META) == ["A", "B"]
    assert trained_classes({"labels": [], "extra": {"pair_labels": ["C"]}}) == ["C"]
    split = {"train": ["A"], "val": ["B"], "test": ["C"]}
    assert trained_classes({"labels": [], "extra": {"meta_split": split}}) == ["A", "B"]


def test_a_child_copies_its_parents_records_and_patients(tmp_path):
    parent = tmp_path / "sup" / "model"
    _model(parent, META, run=tmp_path / "sup", patients=["p1", "p2"], pool="meta-train", pool_seed=3)
    child = tmp_path / "maml" / "model"
    meta = {**META, "training": "maml", "labels": [], "extra": {"meta_split": {"train": ["A"], "val": ["B"]}}}
    record = write_lineage(child, meta, run=tmp_path / "maml", patients=["p3"], parents=[tmp_path / "sup"])
    assert record["run"] == "maml" and record["parents"][0]["run"] == "sup"
    assert record["parents"][0]["pool"]["pool_seed"] == 3 and record["cache"]["manifest_hash"] == "h1"
    sets = load_patient_sets(child)
    assert sorted(sets.values()) == [["p1", "p2"], ["p3"]]  # the parent's ids travel with the child


def test_find_leak_names_the_run_and_what_leaked(tmp_path):
    parent = tmp_path / "sup" / "model"
    _model(parent, {**META, "labels": ["A", "T"]}, run=tmp_path / "sup", patients=["p1", "p2", "p9"])
    child = tmp_path / "maml" / "model"
    record = _model(child, {**META, "labels": []}, run=tmp_path / "maml", patients=["p3"], parents=[parent])
    meta = {"lineage": record}
    sets = load_patient_sets(child)
    assert "ancestor run 'sup'" in find_leak(meta, sets, ["T"], []) and "class(es) T" in find_leak(
        meta, sets, ["T"], []
    )
    assert find_leak(meta, sets, ["Z"], ["x"]) is None
    where = (tmp_path / "sup").resolve()
    expected = f"ancestor run 'sup' (supervised, trained in {where}) trained on 2 patient(s) of the meta-test pool"
    assert find_leak(meta, sets, ["Z"], ["p9", "p2", "q"]) == expected
    assert "run 'maml'" in find_leak(meta, sets, ["Z"], ["p3"]) and "ancestor" not in find_leak(meta, sets, [], ["p3"])
    altered = {k: [*v, "extra"] for k, v in sets.items()}
    assert "missing or altered" in find_leak(meta, altered, ["Z"], [])


def test_a_run_or_parent_without_lineage_cannot_be_checked(tmp_path):
    assert "no lineage record" in find_leak(META, {}, ["Z"], [])
    assert "meta-test class(es) B" in find_leak(META, {}, ["B"], [])
    old = tmp_path / "old" / "model"
    old.mkdir(parents=True)
    (old / "model.json").write_text(json.dumps({"format": "cxr-model", "format_version": 1, "training": "siamese"}))
    stub, sets = read_lineage(old)
    assert stub["missing"] and stub["run"] == "old" and sets == {}
    record = write_lineage(tmp_path / "new", META, run=tmp_path / "new", patients=["p"], parents=[old])
    leak = find_leak({"lineage": record}, load_patient_sets(tmp_path / "new"), ["Z"], [])
    assert "ancestor run 'old'" in leak and "no lineage record" in leak


def test_recorded_pool_seed_prefers_the_lineage():
    assert recorded_pool_seed({"lineage": {"pool": {"pool_seed": 4}}, "extra": {"pool_seed": 1}}) == 4
    assert recorded_pool_seed({"lineage": {"pool": {"pool_seed": None}}, "extra": {"pool_seed": 1}}) == 1
    assert recorded_pool_seed({}) is None


def test_a_corrupt_patients_file_is_a_model_error(tmp_path):
    from cxr_tools.errors import ModelError

    (tmp_path / PATIENTS_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="corrupt"):
        load_patient_sets(tmp_path)
