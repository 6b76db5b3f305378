"""NIH ChestX-ray14 reader against the real v2020 header (tests/fixtures) and the old Kaggle CSV form."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from cache_factory import table_row

from cxr_tools.data.labels import NIH_LABELS
from cxr_tools.data.sources import BASE_COLUMNS, load_source
from cxr_tools.errors import DataError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "nih_Data_Entry_2017_v2020.sample.csv"
CSV = "Data_Entry_2017_v2020.csv"


def names_in(csv: Path) -> list[str]:
    return [line.split(",", 1)[0] for line in csv.read_text().splitlines()[1:] if line.strip()]


def make_nih(root: Path, *, layout: str = "flat", real_images: bool = False, skip: tuple[str, ...] = ()) -> Path:
    """An NIH directory with the fixture CSV and one (zero-byte unless real_images) file per listed image."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURE, root / CSV)
    tiny = cv2.imencode(".png", np.full((8, 8), 128, np.uint8))[1].tobytes() if real_images else b""
    for i, name in enumerate(names_in(FIXTURE)):
        if name in skip:
            continue
        folder = root / "images" if layout == "flat" else root / f"images_{1 + i % 3:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(tiny)
    return root


def test_reads_the_real_v2020_header(tmp_path):
    root = make_nih(tmp_path / "nih", real_images=True)
    src = load_source(root)
    assert src.kind == "nih"
    assert len(src) == len(names_in(FIXTURE)) == 169
    assert list(src.table.columns) == [*BASE_COLUMNS, *NIH_LABELS]
    assert src.labels == NIH_LABELS
    assert src.problems == []
    r = table_row(src.table, "00000001_001.png")
    assert (r["patient_id"], r["study"], r["view"], r["sex"], r["age"]) == ("00000001", "001", "PA", "M", 58.0)
    assert r["Cardiomegaly"] == 1 and r["Emphysema"] == 1
    assert sum(r[lab] for lab in NIH_LABELS) == 2
    no_finding = table_row(src.table, "00000002_000.png")
    assert all(no_finding[lab] == 0 for lab in NIH_LABELS)
    assert Path(r["source_path"]).is_absolute() and Path(r["source_path"]).is_file()
    assert src.metadata_file == (root / CSV).resolve()
    assert src.metadata_sha256 == hashlib.sha256((root / CSV).read_bytes()).hexdigest()
    # label counts match the fixture's Finding Labels column
    cells = pd.read_csv(FIXTURE)["Finding Labels"]
    for lab in NIH_LABELS:
        assert src.table[lab].sum() == cells.str.split("|").apply(lambda xs, lab=lab: lab in xs).sum()
    assert src.table["split"].eq("").all()


def test_images_are_listed_not_opened(tmp_path):
    # zero-byte files: any attempt to decode them would fail, building the table must not
    src = load_source(make_nih(tmp_path / "nih"), "nih")
    assert len(src) == 169


def test_kaggle_layout_and_official_split_lists(tmp_path):
    root = make_nih(tmp_path / "kaggle", layout="kaggle")
    names = names_in(FIXTURE)
    (root / "train_val_list.txt").write_text("\n".join(names[:100]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[100:150]) + "\n")
    src = load_source(root)
    assert len(src) == 169
    assert {Path(p).parent.parent.name for p in src.table["source_path"]} == {"images_001", "images_002", "images_003"}
    assert src.table["split"].value_counts().to_dict() == {"train": 100, "test": 50, "": 19}
    assert str((root / "test_list.txt").resolve()) in src.metadata_files


def test_missing_images_are_problems_not_errors(tmp_path):
    gone = ("00000001_000.png", "00000002_000.png")
    src = load_source(make_nih(tmp_path / "nih", skip=gone))
    assert len(src) == 167
    assert sorted(Path(p).name for p, _ in src.problems) == sorted(gone)
    assert all("not found" in reason for _, reason in src.problems)


def test_old_data_entry_csv_with_trailing_comma_and_bad_age(tmp_path):
    root = tmp_path / "old"
    lines = FIXTURE.read_text().splitlines()
    header = lines[0] + ","
    body = [line + "," for line in lines[1:6]]
    first = body[0].split(",")
    first[4] = "148"  # data-entry error in the real file
    body[0] = ",".join(first)
    (root / "images").mkdir(parents=True)
    (root / "Data_Entry_2017.csv").write_text("\n".join([header, *body]) + "\n")
    for line in body:
        (root / "images" / line.split(",")[0]).write_bytes(b"")
    src = load_source(root)
    assert len(src) == 5
    assert list(src.table.columns) == [*BASE_COLUMNS, *NIH_LABELS]
    assert np.isnan(src.table["age"].iloc[0]) and src.table["age"].iloc[1] == 58.0
    assert src.metadata_file.name == "Data_Entry_2017.csv"


def test_missing_column_names_column_file_and_close_match(tmp_path):
    root = make_nih(tmp_path / "nih")
    text = (root / CSV).read_text().replace("Patient ID", "PatientID", 1)
    (root / CSV).write_text(text)
    with pytest.raises(DataError) as info:
        load_source(root)
    msg = str(info.value)
    assert "'Patient ID'" in msg and str((root / CSV).resolve()) in msg and "'PatientID'" in msg


def test_unknown_finding_names_the_finding_line_and_file(tmp_path):
    root = make_nih(tmp_path / "nih")
    lines = (root / CSV).read_text().splitlines()
    lines[3] = lines[3].replace("Cardiomegaly|Effusion", "Cardiomegaly|Efusion")
    (root / CSV).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_source(root)
    msg = str(info.value)
    assert "Efusion" in msg and "line 4" in msg and CSV in msg


def test_explicit_metadata_path_and_no_images_at_all(tmp_path):
    root = tmp_path / "elsewhere"
    root.mkdir()
    csv = tmp_path / "meta.csv"
    shutil.copyfile(FIXTURE, csv)
    (root / "images").mkdir()
    (root / "images" / "unrelated.png").write_bytes(b"")
    with pytest.raises(DataError, match="None of the 169 images"):
        load_source(root, "nih", metadata=csv)
