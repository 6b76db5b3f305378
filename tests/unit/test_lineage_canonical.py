"""Lineage through everything a model started from, compared canonically: external weights' data cards, class
names spelled differently, and patient ids written differently by different sources."""

from __future__ import annotations

import json

import pytest
from lineage_helpers import META
from lineage_helpers import make_model as _model

from cxr_tools.data.labels import canonical_label as data_canonical_label
from cxr_tools.models import list_models, model_card
from cxr_tools.models.datacards import CARDS, IMAGENET, XRV_ALL, card_record
from cxr_tools.models.lineage import (
    find_leak,
    load_patient_sets,
    patient_key,
    pretraining_notes,
    read_lineage,
)
from cxr_tools.vocabulary import NIH_LABELS, canonical_label, label_key


def _leak(folder, record, classes, patients=()):
    return find_leak({"lineage": record}, load_patient_sets(folder), classes, patients)


# --- data cards ---------------------------------------------------------------------------------------------------


def test_every_weight_source_of_the_zoo_has_a_data_card():
    sources = {w.name for name in list_models() for w in model_card(name).weights}
    assert sources and sources <= set(CARDS)


def test_the_xrv_all_card_covers_nih_and_its_18_findings_and_imagenet_no_chest_xrays():
    assert set(NIH_LABELS) <= set(XRV_ALL.classes()) and len(XRV_ALL.classes()) == 18
    names = {d.dataset for d in XRV_ALL.data}
    assert {
        "NIH ChestX-ray14",
        "PadChest",
        "CheXpert",
        "MIMIC-CXR (CheXpert labeller)",
        "OpenI (Indiana University)",
    } <= names
    assert IMAGENET.classes() == [] and not any(d.chest_xray for d in IMAGENET.data)
    assert card_record(None) is None and card_record("none") is None
    assert card_record("xrv-nih")["data"][0]["classes"] == list(NIH_LABELS)


# --- bypass 1: external weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["xrv", "xrv-chex", "xrv-nih"])
def test_a_run_started_from_weights_that_learned_a_meta_test_class_leaks(tmp_path, weights):
    record = _model(tmp_path / "m", {**META, "pretrained": weights}, run=tmp_path / "run", patients=["p1"])
    leak = _leak(tmp_path / "m", record, ["Cardiomegaly", "Zebra"])
    assert f"TorchXRayVision densenet121-res224-{'all' if weights == 'xrv' else weights[4:]}" in leak
    assert "meta-test class(es) Cardiomegaly" in leak and "Zebra" not in leak


def test_imagenet_and_random_weights_do_not_leak(tmp_path):
    for weights in ("imagenet", None):
        record = _model(tmp_path / str(weights), {**META, "pretrained": weights}, run=tmp_path / "r", patients=["p"])
        assert _leak(tmp_path / str(weights), record, ["Cardiomegaly", "Pneumonia"]) is None


def test_weights_of_an_ancestor_leak_through_init_chains(tmp_path):
    """xrv -> supervised run -> MAML --init run -> Siamese --backbone-from run: the grandchild is refused."""
    _model(tmp_path / "sup" / "model", {**META, "pretrained": "xrv"}, run=tmp_path / "sup", patients=["p1"])
    child = {**META, "labels": []}
    _model(tmp_path / "maml" / "model", child, run=tmp_path / "maml", patients=["p2"], parents=[tmp_path / "sup"])
    record = _model(
        tmp_path / "sia" / "model", child, run=tmp_path / "sia", patients=["p3"], parents=[tmp_path / "maml"]
    )
    leak = _leak(tmp_path / "sia" / "model", record, ["PNEUMONIA"])
    assert leak.startswith("ancestor run 'sup'") and "densenet121-res224-all" in leak and "PNEUMONIA" in leak


def test_a_version_1_parent_gets_the_card_of_the_weights_its_model_json_names(tmp_path):
    folder = tmp_path / "old" / "model"
    record = _model(folder, {**META, "pretrained": "xrv"}, run=tmp_path / "old", patients=["p1"])
    del record["weights"]  # what cxr-tools wrote before records named their weights
    doc = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**doc, "pretrained": "xrv", "lineage": record}))
    assert read_lineage(folder)[0]["weights"]["name"] == "xrv"
    assert "densenet121-res224-all" in find_leak({**META, "pretrained": "xrv", "lineage": record}, {}, ["Edema"], [])
    child = {"lineage": {**record, "run": "child", "weights": None, "parents": [record]}}
    assert "did not name its pretrained weights" in find_leak(child, load_patient_sets(folder), ["Zebra"], [])


def test_weights_without_a_card_cannot_be_checked(tmp_path):
    record = _model(tmp_path / "m", {**META, "pretrained": "mystery"}, run=tmp_path / "run", patients=["p1"])
    assert "no data card" in _leak(tmp_path / "m", record, ["Zebra"])


def test_images_of_the_evaluated_dataset_without_its_classes_are_a_note_not_a_leak(tmp_path):
    meta = {**META, "pretrained": "xrv-chex"}
    record = _model(tmp_path / "m", meta, run=tmp_path / "run", patients=["p1"])
    assert _leak(tmp_path / "m", record, ["Support Devices", "Pleural Other"]) is None
    notes = pretraining_notes({**meta, "lineage": record}, {"kind": "chexpert", "root": "/x"})
    assert len(notes) == 1 and "CheXpert" in notes[0] and "densenet121-res224-chex" in notes[0]
    assert pretraining_notes({**meta, "lineage": record}, {"kind": "nih"}) == []
    assert pretraining_notes({**META, "lineage": record | {"weights": None}}, "chexpert") == []
    merged = {"kind": "merged", "datasets": [{"name": "nih", "kind": "nih"}, {"name": "chexpert", "kind": "chexpert"}]}
    assert pretraining_notes({**meta, "lineage": record}, merged) == notes  # a cache of several datasets: each one
    assert pretraining_notes({**meta, "lineage": record}, {"kind": "merged", "datasets": [{"kind": "nih"}]}) == []


# --- bypass 2: class names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trained", "tested"),
    [
        ("PNEUMONIA", "Pneumonia"),
        ("Pleural Effusion", "Effusion"),
        ("Pleural_Thickening", "Pleural Thickening"),
        ("pleural-thickening", "PLEURAL_THICKENING"),
        ("Bacterial_Pneumonia", "bacterial pneumonia"),  # a folder dataset's own class
    ],
)
def test_class_names_that_differ_only_in_spelling_are_caught(tmp_path, trained, tested):
    record = _model(tmp_path / "m", {**META, "labels": [trained]}, run=tmp_path / "run", patients=["p1"])
    leak = _leak(tmp_path / "m", record, [tested, "Other"])
    assert leak is not None and f"meta-test class(es) {tested}" in leak


def test_different_classes_stay_different():
    assert label_key("Pneumonia") != label_key("Pneumothorax") and label_key("Mass") != label_key("Lung Lesion")
    assert data_canonical_label is canonical_label  # the data layer's name is the shared function


# --- bypass 3: patient ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trained", "tested"),
    [("00000001", "1"), ("1", "00000001"), ("patient00001", "Patient1"), (" 00000042 ", "42")],
)
def test_patient_ids_written_differently_by_two_sources_are_caught(tmp_path, trained, tested):
    record = _model(tmp_path / "m", META, run=tmp_path / "run", patients=[trained, "00000007"])
    leak = _leak(tmp_path / "m", record, ["Z"], [tested, "8"])
    assert leak is not None and "1 patient(s) of the meta-test pool" in leak and f"'{tested}' here" in leak


def test_distinct_patients_stay_distinct(tmp_path):
    assert patient_key("00000010") != patient_key("1") and patient_key("0") == patient_key("000")
    record = _model(tmp_path / "m", META, run=tmp_path / "run", patients=["00000010", "patient00002"])
    assert _leak(tmp_path / "m", record, ["Z"], ["1", "100", "patient00020", "2"]) is None


@pytest.mark.parametrize(
    ("trained", "tested", "leaks"),
    [
        ("nih:00000001", "chexpert:1", False),  # two datasets' patient 1: two patients
        ("nih:00000001", "nih:1", True),
        ("nih:00000001", "1", True),  # a one-dataset cache does not say which dataset: compared in every one
        ("00000001", "chexpert:1", True),
        ("nih:00000002", "nih:1", False),
    ],
)
def test_dataset_qualified_patient_ids_of_a_merged_cache(tmp_path, trained, tested, leaks):
    """A cache of several datasets writes DATASET:ID; the leak check keeps datasets apart, conservatively when one
    side's dataset is unknown."""
    record = _model(tmp_path / "m", META, run=tmp_path / "run", patients=[trained])
    leak = _leak(tmp_path / "m", record, ["Z"], [tested, "nih:99"])
    assert (leak is not None) == leaks, leak
    if leaks:
        assert "1 patient(s) of the meta-test pool" in leak
