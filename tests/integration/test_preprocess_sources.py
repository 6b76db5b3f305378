"""Every source kind through the preprocess engine: synthetic NIH / CheXpert output, image folders, DICOM."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import cache_contents

from cxr_tools.data.labels import CHEXPERT_LABELS, NIH_LABELS
from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess


def _cfg(src, out, **kw):
    return PreprocessConfig(src=src, output=out, size=32, workers=0, **kw)


def test_synthetic_nih_layout_keeps_the_official_test_list(tmp_path):
    src = tmp_path / "syn"
    generate(SyntheticConfig(dest=src, patients=8, size=64))
    result = preprocess(_cfg(src, tmp_path / "c"))
    images, index, manifest, _ = cache_contents(tmp_path / "c")
    assert result.source_kind == manifest["source"]["kind"] == "synthetic"
    assert manifest["labels"] == list(NIH_LABELS)
    official_test = set((src / "test_list.txt").read_text().split())
    assert official_test, "the generator writes an official test list"
    stored_test = set(index.loc[index["split"] == "test", "image_id"])
    assert stored_test == official_test & set(index["image_id"])
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert {"test_list.txt", "train_val_list.txt"} <= set(manifest["source"]["metadata_files"])
    assert images.shape == (result.images, 32, 32) and images.std() > 0


def test_synthetic_chexpert_layout_keeps_uncertain_labels_and_views(tmp_path):
    src = tmp_path / "syn"
    generate(SyntheticConfig(dest=src, patients=12, size=64, layout="chexpert"))
    frontal = preprocess(_cfg(src, tmp_path / "frontal"))
    every = preprocess(_cfg(src, tmp_path / "all", views=("all",)))
    _, index, manifest, _ = cache_contents(tmp_path / "all")
    assert manifest["labels"] == list(CHEXPERT_LABELS)
    assert every.images >= frontal.images
    values = set(index[list(CHEXPERT_LABELS)].to_numpy().ravel())
    assert values <= {"1", "0", "-1", ""} and "-1" in values and "" in values
    _, findex, _, _ = cache_contents(tmp_path / "frontal")
    assert "LATERAL" not in set(findex["view"])


def test_folder_source_one_class_per_subfolder(tmp_path):
    rng = np.random.default_rng(0)
    for offset, split in ((0, "train"), (10, "test")):
        for cls in ("NORMAL", "PNEUMONIA"):
            d = tmp_path / "chest" / split / cls
            d.mkdir(parents=True)
            for k in range(3):
                img = rng.integers(0, 255, (40, 50), dtype=np.uint8)
                cv2.imwrite(str(d / f"person{offset + k}_{cls.lower()}_{k}.jpeg"), img)
    result = preprocess(_cfg(tmp_path / "chest", tmp_path / "c"))
    _, index, manifest, _ = cache_contents(tmp_path / "c")
    assert result.source_kind == "folder" and manifest["labels"] == ["NORMAL", "PNEUMONIA"]
    assert result.images == 12
    assert set(index.loc[index["source_path"].str.contains("/test/"), "split"]) == {"test"}
    for _, rec in index.iterrows():
        cls = Path(rec["source_path"]).parent.name
        assert rec[cls] == "1"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_folder(tmp_path, photometric):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = tmp_path / "dicom"
    root.mkdir()
    ramp = np.tile(np.linspace(0, 4000, 48).astype(np.uint16), (48, 1))
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(root / f"im{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.ViewPosition, ds.Modality = f"P{k}", "PA", "DX"
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 48, 48, 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = ramp.tobytes()
        ds.save_as(root / f"im{k}.dcm", enforce_file_format=True)
    assert pydicom.dcmread(root / "im0.dcm").Rows == 48
    result = preprocess(_cfg(root, tmp_path / "c", clahe=False, crop="none"))
    images, index, _, _ = cache_contents(tmp_path / "c")
    assert result.source_kind == "dicom" and result.images == 3
    left, right = images[0][:, :4].mean(), images[0][:, -4:].mean()
    # MONOCHROME1 stores bright as low values: the cached image must come out inverted
    assert (right > left + 100) if photometric == "MONOCHROME2" else (left > right + 100)
    assert set(pd.unique(index["patient_id"])) == {"P0", "P1", "P2"}
