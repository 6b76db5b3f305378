"""Folder and DICOM-folder sources, and source auto-detection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import dx_dataset, set_pixels

from cxr_tools.data.sources import BASE_COLUMNS, SYNTHETIC_MARKERS, detect_source, load_source
from cxr_tools.errors import ConfigError, DataError, InputError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_pneumonia(root: Path) -> Path:
    """The Kaggle pneumonia layout, with the zip's junk (__MACOSX, ._ forks, a .DS_Store)."""
    for split in ("train", "test", "val"):
        touch(root / split / "NORMAL" / f"IM-00{len(split)}1-0001.jpeg")
        touch(root / split / "NORMAL" / f"NORMAL2-IM-{len(split)}-0001.jpeg")
        touch(root / split / "PNEUMONIA" / f"person{len(split)}_bacteria_1.jpeg")
        touch(root / split / "PNEUMONIA" / f"person{len(split)}_virus_2.jpeg")
        touch(root / split / "PNEUMONIA" / "._person9_virus_9.jpeg")
        touch(root / split / ".DS_Store")
    touch(root / "__MACOSX" / "train" / "NORMAL" / "IM-1.jpeg")
    touch(root / "train" / "PNEUMONIA" / "notes.txt")
    return root


def test_kaggle_pneumonia_folder(tmp_path):
    root = make_pneumonia(tmp_path / "chest_xray")
    assert detect_source(root) == "folder"
    src = load_source(root)
    t = src.table
    assert src.kind == "folder" and src.labels == ("NORMAL", "PNEUMONIA")
    assert list(t.columns) == [*BASE_COLUMNS, "NORMAL", "PNEUMONIA"]
    assert len(t) == 12 and not src.problems
    assert t["split"].value_counts().to_dict() == {"test": 4, "train": 4, "val": 4}
    assert (t["NORMAL"] + t["PNEUMONIA"] == 1).all()
    pneu = t[t["PNEUMONIA"] == 1]
    assert set(pneu["patient_id"]) == {"person5", "person4", "person3"}
    r = t[t["image_id"] == "train/NORMAL/IM-0051-0001.jpeg"].iloc[0]
    assert r["patient_id"] == "IM-0051-0001" and r["NORMAL"] == 1 and r["view"] == "" and np.isnan(r["age"])


def test_class_folders_without_split_and_stray_images(tmp_path):
    root = tmp_path / "classes"
    touch(root / "Effusion" / "a.png")
    touch(root / "Effusion" / "deeper" / "b.PNG")
    touch(root / "No Finding" / "c.tif")
    touch(root / "stray.png")
    src = load_source(root, "folder")
    assert src.labels == ("Effusion", "No Finding")
    assert sorted(src.table["image_id"]) == ["Effusion/a.png", "Effusion/deeper/b.PNG", "No Finding/c.tif"]
    assert set(src.table["split"]) == {""}
    assert src.problems == [(str((root / "stray.png").resolve()), "not inside a class folder")]
    with pytest.raises(ConfigError, match="metadata"):
        load_source(root, "folder", metadata=FIXTURES / "chexpert_train.sample.csv")


# ---------------------------------------------------------------------------------------------------- DICOM


def write_dicom(path: Path, *, pixels: bool = True, **tags: object) -> Path:
    ds = dx_dataset(**tags)
    if pixels:
        set_pixels(ds, np.zeros((4, 4), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicom_dir(root: Path) -> Path:
    write_dicom(root / "p1" / "a.dcm", PatientID="P1", StudyInstanceUID="1.1", ViewPosition="PA", PatientSex="F",
                PatientAge="061Y")  # fmt: skip
    write_dicom(root / "p1" / "b.dcm", PatientID="P1", StudyInstanceUID="1.1", ViewPosition="LL", PatientSex="F",
                PatientAge="061Y")  # fmt: skip
    write_dicom(root / "p2" / "1.2.840.99", PatientID="P2", StudyInstanceUID="2.1", ViewPosition="AP",
                PatientSex="M", PatientBirthDate="19500101", StudyDate="20200102")  # fmt: skip
    write_dicom(root / "p3" / "c.dicom", PatientID="", StudyInstanceUID="3.1", PatientSex="O")
    touch(root / "p3" / "broken.dcm", b"\x00" * 10)
    touch(root / "README.txt", b"export from PACS")
    return root


def test_dicom_folder_tags_without_pixels(tmp_path):
    root = make_dicom_dir(tmp_path / "dicoms")
    assert detect_source(root) == "dicom"
    src = load_source(root)
    t = src.table.set_index("image_id")
    assert src.kind == "dicom" and src.labels == () and list(src.table.columns) == list(BASE_COLUMNS)
    assert sorted(t.index) == ["p1/a.dcm", "p2/1.2.840.99", "p3/c.dicom"]  # lateral p1/b.dcm filtered out
    assert tuple(t.loc["p1/a.dcm", ["patient_id", "study", "view", "sex"]]) == ("P1", "1.1", "PA", "F")
    assert t.loc["p1/a.dcm", "age"] == 61.0
    assert t.loc["p2/1.2.840.99", "sex"] == "M" and t.loc["p2/1.2.840.99", "age"] == pytest.approx(70.0, abs=0.01)
    assert t.loc["p3/c.dicom", "patient_id"] == "3.1" and t.loc["p3/c.dicom", "sex"] == ""  # no PatientID
    assert [Path(p).name for p, _ in src.problems] == ["broken.dcm"]
    lateral = load_source(root, views="lateral")
    assert list(lateral.table["image_id"]) == ["p1/b.dcm"] and lateral.table["view"].iloc[0] == "LATERAL"


def test_dicom_labels_from_metadata_csv_by_path_and_uid(tmp_path):
    root = make_dicom_dir(tmp_path / "dicoms")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,Pneumothorax,Effusion,split,patient_id\np1/a.dcm,1,-1,test,\np3/c.dicom,0,,,anon7\n"
                   "p9/missing.dcm,1,1,,\n")  # fmt: skip
    src = load_source(root, metadata=csv)
    t = src.table.set_index("image_id")
    assert src.labels == ("Pneumothorax", "Effusion") and src.metadata_file == csv.resolve()
    assert sorted(t.index) == ["p1/a.dcm", "p3/c.dicom"]  # p2 is not listed: left out
    assert t.loc["p1/a.dcm", "Effusion"] == -1 and t.loc["p1/a.dcm", "split"] == "test"
    assert np.isnan(t.loc["p3/c.dicom", "Effusion"]) and t.loc["p3/c.dicom", "patient_id"] == "anon7"
    assert any("missing.dcm" in p and "no such DICOM" in r for p, r in src.problems)

    import pydicom

    uid = str(pydicom.dcmread(root / "p2" / "1.2.840.99").SOPInstanceUID)
    by_uid = tmp_path / "by_uid.csv"
    by_uid.write_text(f"SOPInstanceUID,Cardiomegaly\n{uid},1\n")
    src = load_source(root, "dicom", metadata=by_uid)
    assert list(src.table["image_id"]) == ["p2/1.2.840.99"] and src.table["Cardiomegaly"].iloc[0] == 1


def test_dicom_folder_labels(tmp_path):
    root = tmp_path / "classes"
    write_dicom(root / "NORMAL" / "a.dcm", PatientID="1")
    write_dicom(root / "PNEUMONIA" / "b.dcm", PatientID="2")
    write_dicom(root / "c.dcm", PatientID="3")
    src = load_source(root, "dicom", folder_labels=True)
    assert src.labels == ("NORMAL", "PNEUMONIA")
    assert src.table[["NORMAL", "PNEUMONIA"]].to_numpy().tolist() == [[1, 0], [0, 1]]
    assert [Path(p).name for p, _ in src.problems] == ["c.dcm"]
    with pytest.raises(ConfigError, match="DICOM"):
        load_source(root, "folder", folder_labels=True)


def test_dicom_metadata_without_key_column(tmp_path):
    root = make_dicom_dir(tmp_path / "dicoms")
    (tmp_path / "bad.csv").write_text("file_name,Edema\np1/a.dcm,1\n")
    with pytest.raises(DataError, match="key column"):
        load_source(root, "dicom", metadata=tmp_path / "bad.csv")


# ------------------------------------------------------------------------------------------------ detection


def test_detection_of_every_kind(tmp_path):
    nih = tmp_path / "nih"
    nih.mkdir()
    shutil.copyfile(FIXTURES / "nih_Data_Entry_2017_v2020.sample.csv", nih / "Data_Entry_2017_v2020.csv")
    assert detect_source(nih) == "nih"
    old = tmp_path / "old"
    old.mkdir()
    (old / "Data_Entry_2017.csv").write_text("x")
    assert detect_source(old) == "nih"
    chex = tmp_path / "chex" / "CheXpert-v1.0-small"
    chex.mkdir(parents=True)
    shutil.copyfile(FIXTURES / "chexpert_train.sample.csv", chex / "train.csv")
    assert detect_source(chex.parent) == "chexpert" and detect_source(chex) == "chexpert"
    (nih / SYNTHETIC_MARKERS[0]).write_text("{}")
    assert detect_source(nih) == "synthetic"
    (chex / SYNTHETIC_MARKERS[0]).write_text("{}")
    assert detect_source(chex.parent) == "synthetic"


def test_synthetic_kind_reads_its_layout(tmp_path):
    root = tmp_path / "synth"
    (root / "images").mkdir(parents=True)
    csv = FIXTURES / "nih_Data_Entry_2017_v2020.sample.csv"
    shutil.copyfile(csv, root / "Data_Entry_2017_v2020.csv")
    for line in csv.read_text().splitlines()[1:]:
        (root / "images" / line.split(",")[0]).write_bytes(b"")
    (root / SYNTHETIC_MARKERS[0]).write_text("{}")
    src = load_source(root)
    assert src.kind == "synthetic" and len(src) == 169 and src.labels[0] == "Atelectasis"
    assert load_source(root, "nih").kind == "nih"


def test_nothing_recognisable_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "flat.png").write_bytes(b"")
    with pytest.raises(DataError) as info:
        detect_source(tmp_path)
    msg = str(info.value)
    for expected in ("Data_Entry_2017_v2020.csv", "train.csv", ".dcm", "class sub-folders"):
        assert expected in msg
    with pytest.raises(InputError):
        detect_source(tmp_path / "absent")
    with pytest.raises(ConfigError, match="kind"):
        load_source(tmp_path, "mimic")


def test_no_image_of_the_chosen_view(tmp_path):
    root = make_pneumonia(tmp_path / "chest_xray")
    with pytest.raises(DataError, match="view 'lateral'"):
        load_source(root, views="lateral")
