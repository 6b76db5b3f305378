"""The synthetic phantom dataset is written in the real NIH and CheXpert layouts and parses like them."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_tools.data.labels import (
    CHEXPERT_LABELS,
    CHEXPERT_META_COLUMNS,
    NIH_CSV_HEADER,
    NIH_LABELS,
    NO_FINDING,
    parse_nih_findings,
)
from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.data.synthetic.plan import plan_patient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    dest = tmp_path_factory.mktemp("syn") / "nih"
    return generate(SyntheticConfig(dest=dest, patients=14, size=48, seed=3))


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    dest = tmp_path_factory.mktemp("syn") / "chexpert"
    return generate(SyntheticConfig(dest=dest, patients=30, size=40, seed=5, layout="chexpert"))


def test_nih_csv_has_the_real_header_and_field_layout(nih):
    real_header = (FIXTURES / "nih_Data_Entry_2017_v2020.sample.csv").read_text().splitlines()[0]
    text = nih.metadata_csv.read_text()
    assert text.splitlines()[0] == real_header == NIH_CSV_HEADER
    rows = list(csv.reader(text.splitlines()))
    assert all(len(r) == 11 for r in rows)
    ours = pd.read_csv(nih.metadata_csv)
    real = pd.read_csv(FIXTURES / "nih_Data_Entry_2017_v2020.sample.csv")
    assert list(ours.columns) == list(real.columns)
    for col in ("Follow-up #", "Patient ID", "Patient Age", "OriginalImage[Width", "Height]"):
        assert ours[col].dtype.kind == real[col].dtype.kind == "i", col
    assert ours["OriginalImagePixelSpacing[x"].dtype.kind == "f"
    assert set(ours["Patient Gender"]) <= {"M", "F"} and set(ours["View Position"]) <= {"PA", "AP"}
    assert ours["Patient Age"].between(1, 99).all()
    assert len(ours) == nih.n_images and ours["Patient ID"].nunique() == nih.n_patients == 14


def test_nih_images_named_and_shaped_like_the_real_ones(nih):
    df = pd.read_csv(nih.metadata_csv)
    for _, row in df.iterrows():
        name = row["Image Index"]
        assert re.fullmatch(r"\d{8}_\d{3}\.png", name)
        assert int(name[:8]) == row["Patient ID"] and int(name[9:12]) == row["Follow-up #"]
        img = cv2.imread(str(nih.dest / "images" / name), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (48, 48)
        labels = parse_nih_findings(row["Finding Labels"])
        assert (row["Finding Labels"] == NO_FINDING) == (not labels)
        assert labels == [n for n in NIH_LABELS if n in labels]  # NIH order, no duplicates
    assert sorted(p.name for p in (nih.dest / "images").iterdir()) == sorted(df["Image Index"])


def test_label_counts_match_the_csv(nih):
    df = pd.read_csv(nih.metadata_csv)
    counts = dict.fromkeys([*NIH_LABELS, NO_FINDING], 0)
    for cell in df["Finding Labels"]:
        for name in cell.split("|"):
            counts[name] += 1
    assert nih.label_counts == counts
    assert list(nih.label_counts) == [*NIH_LABELS, NO_FINDING]


def test_nih_split_lists_are_patient_disjoint_and_complete(nih):
    train = (nih.dest / "train_val_list.txt").read_text().split()
    test = (nih.dest / "test_list.txt").read_text().split()
    df = pd.read_csv(nih.metadata_csv)
    assert sorted(train + test) == sorted(df["Image Index"])
    assert {n[:8] for n in train}.isdisjoint({n[:8] for n in test})
    assert 1 <= len({n[:8] for n in test}) <= 6  # about 20% of 14 patients


def test_chexpert_csvs_have_the_real_columns_and_cells(chexpert):
    root = chexpert.dest / "CheXpert-v1.0-small"
    real = pd.read_csv(FIXTURES / "chexpert_train.sample.csv")
    header = ",".join((*CHEXPERT_META_COLUMNS, *CHEXPERT_LABELS))
    assert (FIXTURES / "chexpert_train.sample.csv").read_text().splitlines()[0] == header
    train, valid = pd.read_csv(root / "train.csv"), pd.read_csv(root / "valid.csv")
    assert chexpert.metadata_csv == root / "train.csv"
    for df, split in ((train, "train"), (valid, "valid")):
        assert list(df.columns) == list(real.columns)
        assert (root / f"{split}.csv").read_text().splitlines()[0] == header
        assert (
            df["Path"]
            .str.fullmatch(rf"CheXpert-v1\.0-small/{split}/patient\d{{5}}/study\d+/view\d_(frontal|lateral)\.jpg")
            .all()
        )
        for path in df["Path"]:
            img = cv2.imread(str(chexpert.dest / path), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape == (40, 40)
        labels = df[list(CHEXPERT_LABELS)]
        assert set(np.unique(labels.to_numpy()[~labels.isna().to_numpy()])) <= {1.0, 0.0, -1.0}
        lateral = df["Frontal/Lateral"] == "Lateral"
        assert df.loc[lateral, "AP/PA"].isna().all() and df.loc[~lateral, "AP/PA"].isin(["AP", "PA"]).all()
        assert df["Path"].str.endswith("_lateral.jpg").eq(lateral).all()
        assert set(df["Sex"]) <= {"Male", "Female"}
    cells = train[list(CHEXPERT_LABELS)].to_numpy()
    assert (cells == -1.0).any() and np.isnan(cells).any() and (cells == 1.0).any()  # uncertain and unmentioned
    assert not valid[list(CHEXPERT_LABELS)].isna().any().any()  # valid is fully labelled, like the real one
    assert (train["Frontal/Lateral"] == "Lateral").any()
    patient = re.compile(r"patient\d{5}")
    assert {patient.search(p).group() for p in train["Path"]}.isdisjoint(
        {patient.search(p).group() for p in valid["Path"]}
    )
    assert len(valid) > 0


def test_chexpert_labels_follow_the_nih_findings_drawn(chexpert):
    """Effusion is drawn -> Pleural Effusion is positive or uncertain, never negative (train and valid)."""
    from cxr_tools.data.synthetic.plan import PatientPlan  # noqa: F401  (documents where the mapping comes from)

    root = chexpert.dest / "CheXpert-v1.0-small"
    df = pd.concat([pd.read_csv(root / "train.csv"), pd.read_csv(root / "valid.csv")])
    nf = df["No Finding"] == 1.0
    pathologies = [c for c in CHEXPERT_LABELS if c not in (NO_FINDING, "Support Devices", "Fracture")]
    assert not (df.loc[nf, pathologies] == 1.0).any().any()
    assert nf.any() and (df["Pleural Effusion"] == 1.0).any()


def test_label_frequencies_are_nih_shaped():
    plans = [plan_patient(0, p, "nih", "png") for p in range(1, 401)]
    images = [it for plan in plans for it in plan.images]
    counts = dict.fromkeys(NIH_LABELS, 0)
    multi = none = 0
    for it in images:
        names = [n for n, _ in it.spec.findings]
        none += not names
        multi += len(names) > 1
        for n in names:
            counts[n] += 1
    n = len(images)
    assert 2.0 < n / 400 < 4.5  # NIH has 3.6 images per patient
    assert 0.4 < none / n < 0.62
    assert max(counts, key=counts.get) in {"Infiltration", "Effusion", "Atelectasis"}
    assert 3 <= counts["Hernia"] <= sorted(counts.values())[2]  # rare, but there
    assert multi / n > 0.08  # findings co-occur
    assert all(c > 0 for c in counts.values())
    follow = [len(p.images) for p in plans]
    assert follow.count(1) > 100 and max(follow) >= 6


def test_chronic_findings_persist_across_follow_ups():
    kept = total = 0
    for p in range(1, 301):
        images = plan_patient(1, p, "nih", "png").images
        for prev, cur in itertools.pairwise(images):
            for name, onset in prev.spec.findings:
                if name in {"Cardiomegaly", "Emphysema", "Fibrosis", "Nodule", "Mass"}:
                    total += 1
                    kept += (name, onset) in cur.spec.findings
    assert total > 20 and kept / total > 0.7
