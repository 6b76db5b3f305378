"""Patient splits: never a patient on two sides, official lists honoured, fractions and seeds respected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cache_factory import NIH_SAMPLE, make_index, nih_sample_index

from cxr_tools.data.labels import NIH_LABELS
from cxr_tools.data.splits.patients import assign_splits, check_fractions, check_patient_disjoint
from cxr_tools.errors import ConfigError, DataError


def _random_table(seed: int, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patients = [f"p{int(p):04d}" for p in rng.integers(0, n // 3, n)]  # uneven images per patient
    return make_index(n, ("A", "B", "C"), patients=patients, seed=seed, positive_rate=0.1)


def _sides_per_patient(table: pd.DataFrame, split: pd.Series) -> pd.Series:
    return pd.DataFrame({"p": table["patient_id"], "s": split}).groupby("p")["s"].nunique()


@pytest.mark.parametrize("seed", range(25))
def test_never_a_patient_on_two_sides(seed):
    table = _random_table(seed)
    split = assign_splits(table.drop(columns="split"), seed=seed, labels=("A", "B", "C"))
    assert set(split) <= {"train", "val", "test"} and len(split) == len(table)
    assert (_sides_per_patient(table, split) == 1).all()
    check_patient_disjoint(table.assign(split=split))


def test_fractions_are_of_patients_and_seed_changes_assignment():
    table = make_index(2000, ("A",), patients=[f"p{i // 2}" for i in range(2000)], splits=[""] * 2000)
    a = assign_splits(table, seed=1)
    per_patient = pd.DataFrame({"p": table["patient_id"], "s": a}).drop_duplicates("p")["s"].value_counts()
    assert per_patient["train"] == pytest.approx(700, abs=2)
    assert per_patient["val"] == pytest.approx(100, abs=2)
    assert per_patient["test"] == pytest.approx(200, abs=2)
    assert assign_splits(table, seed=1).equals(a)  # deterministic
    assert not assign_splits(table, seed=2).equals(a)
    assert "split" in table.columns and (table["split"] == "").all()  # pure: input untouched


def test_stratification_sends_a_rare_label_to_every_split():
    n = 1000
    values = np.zeros((n, 1), dtype=np.float32)
    values[:30, 0] = 1  # 30 patients with the rare finding
    table = make_index(n, ("Rare",), values=values, patients=[f"p{i}" for i in range(n)], splits=[""] * n)
    for seed in range(5):
        split = assign_splits(table, seed=seed, labels=("Rare",))
        rare = split[:30].value_counts()
        assert rare.get("train", 0) == pytest.approx(21, abs=2)
        assert rare.get("val", 0) >= 2 and rare.get("test", 0) >= 5


def test_official_lists_are_honoured_and_val_carved_from_train_by_patient():
    n = 400
    patients = [f"p{i // 4}" for i in range(n)]  # 100 patients
    official = ["test" if i // 4 < 25 else "train" for i in range(n)]
    table = make_index(n, ("A",), patients=patients, splits=official)
    split = assign_splits(table, seed=3, fractions=(0.7, 0.1, 0.2))
    assert (split[np.array(official) == "test"] == "test").all()
    assert not (split[np.array(official) == "train"] == "test").any()
    val_patients = set(table["patient_id"][split == "val"])
    assert len(val_patients) == pytest.approx(75 * 0.1 / 0.8, abs=1)
    assert (_sides_per_patient(table, split) == 1).all()
    # an explicit official Series wins over the table's column
    alt = pd.Series(["train"] * 200 + ["test"] * 200)
    split2 = assign_splits(table.drop(columns="split"), seed=3, official=alt)
    assert (split2[200:] == "test").all()


def test_official_val_is_kept_and_nothing_carved():
    table = make_index(6, ("A",), patients=list("aabbcc"), splits=["train", "train", "val", "val", "test", "test"])
    assert list(assign_splits(table, seed=0)) == ["train", "train", "val", "val", "test", "test"]


def test_patient_on_both_official_sides_is_an_error_naming_it():
    table = make_index(6, ("A",), patients=["x", "x", "y", "y", "z", "z"])
    official = ["train", "test", "train", "train", "test", "test"]
    with pytest.raises(DataError, match=r"1 patient.*: x\."):
        assign_splits(table, official=official)


def test_rows_without_official_value_follow_their_patient():
    table = make_index(6, ("A",), patients=list("aabbcc"), splits=["test", "", "train", "", "", ""])
    split = assign_splits(table, seed=0, fractions=(0.5, 0.0, 0.5))
    assert list(split[:4]) == ["test", "test", "train", "train"]
    assert split[4] == split[5]


def test_bad_inputs_are_clear_errors():
    table = make_index(4, ("A",), splits=["train", "oops", "test", "test"])
    with pytest.raises(DataError, match="oops"):
        assign_splits(table)
    with pytest.raises(DataError, match="patient id"):
        assign_splits(make_index(2, ("A",), patients=["a", ""], splits=["", ""]))
    for bad in [(0.5, 0.5), (0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (0.8, -0.1, 0.3), ("a", 1, 1)]:
        with pytest.raises(ConfigError):
            check_fractions(bad)
    assert check_fractions([0.8, 0, 0.2]) == (0.8, 0.0, 0.2)


def test_check_patient_disjoint_lists_offenders():
    table = make_index(6, ("A",), patients=list("aabbcc"), splits=["train", "test", "val", "val", "test", "train"])
    with pytest.raises(DataError, match=r"2 patient\(s\).*: a, c"):
        check_patient_disjoint(table)
    check_patient_disjoint(table.assign(split=["train", "train", "val", "val", "", "test"]))


@pytest.mark.skipif(not NIH_SAMPLE.is_file(), reason="tests/fixtures NIH CSV excerpt not copied yet")
def test_real_nih_excerpt_splits_by_patient():
    table = nih_sample_index()
    for seed in range(10):
        split = assign_splits(table, seed=seed, labels=NIH_LABELS)
        assert (_sides_per_patient(table, split) == 1).all()
        assert set(split) == {"train", "val", "test"}
