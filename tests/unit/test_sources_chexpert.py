"""CheXpert reader against the real train.csv header (tests/fixtures): uncertain cells, views, patients, paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from cache_factory import table_row

from cxr_tools.data.labels import CHEXPERT_LABELS
from cxr_tools.data.sources import BASE_COLUMNS, load_source
from cxr_tools.errors import DataError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "chexpert_train.sample.csv"
DATASET = "CheXpert-v1.0-small"
VALID_ROWS = [
    "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,"
    + ",".join(["0.0", "1.0", "1.0", "1.0"] + ["0.0"] * 10),
    "CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,," + ",".join(["0.0"] * 14),
]


def make_chexpert(parent: Path, *, real_images: bool = False, skip: tuple[str, ...] = ()) -> Path:
    """PARENT/CheXpert-v1.0-small/{train.csv,valid.csv,train/...,valid/...} like the extracted archive."""
    ds = parent / DATASET
    ds.mkdir(parents=True)
    shutil.copyfile(FIXTURE, ds / "train.csv")
    header = FIXTURE.read_text().splitlines()[0]
    (ds / "valid.csv").write_text("\n".join([header, *VALID_ROWS]) + "\n")
    tiny = cv2.imencode(".jpg", np.full((8, 8), 99, np.uint8))[1].tobytes() if real_images else b""
    for csv in ("train.csv", "valid.csv"):
        for rel in pd.read_csv(ds / csv)["Path"]:
            if rel in skip:
                continue
            target = parent / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tiny)
    return parent


def test_reads_real_header_and_keeps_uncertain_cells(tmp_path):
    src = load_source(make_chexpert(tmp_path / "data", real_images=True))
    assert src.kind == "chexpert"
    assert list(src.table.columns) == [*BASE_COLUMNS, *CHEXPERT_LABELS]
    assert src.labels == CHEXPERT_LABELS
    r = table_row(src.table, "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg")
    # Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
    assert (r["patient_id"], r["study"], r["view"], r["sex"], r["age"]) == ("patient00002", "study2", "AP", "F", 87.0)
    assert np.isnan(r["No Finding"]) and np.isnan(r["Enlarged Cardiomediastinum"])
    assert r["Cardiomegaly"] == -1 and r["Lung Opacity"] == 1 and r["Edema"] == -1 and r["Consolidation"] == -1
    assert r["Atelectasis"] == -1 and r["Pleural Effusion"] == -1 and r["Fracture"] == 1
    assert np.isnan(r["Support Devices"])
    first = table_row(src.table, "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert first["No Finding"] == 1 and first["Pneumothorax"] == 0 and first["Support Devices"] == 1
    assert Path(first["source_path"]).is_file()
    raw = pd.read_csv(FIXTURE)
    frontal = raw[raw["Frontal/Lateral"] == "Frontal"]
    assert (src.table["split"] == "").sum() == len(frontal)
    assert (src.table["split"] == "val").sum() == 1  # the valid.csv lateral is filtered out
    assert (src.table[list(CHEXPERT_LABELS)] == -1).sum().sum() == (frontal[list(CHEXPERT_LABELS)] == -1).sum().sum()
    assert src.metadata_file.name == "train.csv" and len(src.metadata_files) == 2


def test_view_selection(tmp_path):
    root = make_chexpert(tmp_path / "data")
    raw = pd.read_csv(FIXTURE)
    n_lat = int((raw["Frontal/Lateral"] == "Lateral").sum())
    frontal = load_source(root)
    lateral = load_source(root, views="lateral")
    both = load_source(root, views="all")
    pa = load_source(root, views=("PA",))
    assert len(frontal) == len(raw) - n_lat + 1 and len(lateral) == n_lat + 1 and len(both) == len(raw) + 2
    assert set(lateral.table["view"]) == {"LATERAL"} and "LATERAL" not in set(frontal.table["view"])
    assert set(pa.table["view"]) == {"PA"} and len(pa) == int((raw["AP/PA"] == "PA").sum())


def test_root_may_be_the_dataset_folder_or_its_parent(tmp_path):
    parent = make_chexpert(tmp_path / "data")
    a = load_source(parent)
    b = load_source(parent / DATASET)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert not a.problems and not b.problems


def test_renamed_dataset_folder_still_resolves(tmp_path):
    parent = make_chexpert(tmp_path / "data")
    renamed = tmp_path / "my-chexpert"
    (parent / DATASET).rename(renamed)
    src = load_source(renamed, "chexpert")
    assert not src.problems and all(Path(p).is_file() for p in src.table["source_path"])


def test_patients_and_studies(tmp_path):
    src = load_source(make_chexpert(tmp_path / "data"), views="all")
    for image_id, pid, study in zip(src.table["image_id"], src.table["patient_id"], src.table["study"], strict=True):
        parts = image_id.split("/")
        assert pid == parts[2] and study == parts[3]
    assert table_row(src.table, VALID_ROWS[0].split(",")[0])["split"] == "val"


def test_missing_images_are_problems(tmp_path):
    gone = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    src = load_source(make_chexpert(tmp_path / "data", skip=(gone,)))
    assert [Path(p).parts[-4:] for p, _ in src.problems] == [tuple(gone.split("/")[1:])]
    assert gone not in set(src.table["image_id"])


def test_invalid_label_cell_names_column_and_line(tmp_path):
    root = make_chexpert(tmp_path / "data")
    csv = root / DATASET / "train.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace(",1.0,", ",yes,", 1)
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_source(root)
    assert "'yes'" in str(info.value) and "line 3" in str(info.value) and "train.csv" in str(info.value)


def test_missing_label_column_is_named(tmp_path):
    root = make_chexpert(tmp_path / "data")
    csv = root / DATASET / "train.csv"
    csv.write_text(csv.read_text().replace("Pleural Effusion", "Pleural Efusion", 1))
    with pytest.raises(DataError, match=r"'Pleural Effusion' \(found 'Pleural Efusion'"):
        load_source(root)
