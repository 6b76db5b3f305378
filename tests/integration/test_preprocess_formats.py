"""cxr preprocess engine on a tiny real NIH-layout dataset: formats, workers, manifest, index, reader."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import assert_same_cache, cache_contents, make_nih

from cxr_tools.data.caches.format import INDEX_META_COLUMNS, SCHEMA_VERSION, open_cache
from cxr_tools.data.decoding.imaging import ImageOps, load_image
from cxr_tools.data.labels import NIH_LABELS
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess
from cxr_tools.runtime.progress import RecordingProgress


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    return make_nih(tmp_path_factory.mktemp("nih"), patients=10, per_patient=3, size=48)


def _cfg(src, out, **kw):
    return PreprocessConfig(src=src, output=out, size=32, workers=0, chunk_size=4, **kw)


def test_hdf5_and_memmap_identical_behind_one_reader(nih, tmp_path):
    r_h5 = preprocess(_cfg(nih, tmp_path / "h5", format="hdf5"))
    r_mm = preprocess(_cfg(nih, tmp_path / "mm", format="memmap"))
    assert (tmp_path / "h5" / "images.h5").is_file() and (tmp_path / "mm" / "images.npy").is_file()
    assert r_h5.images == r_mm.images == 30 and r_h5.rejected == 0
    assert_same_cache(tmp_path / "h5", tmp_path / "mm", ignore=("storage", "store_file"))
    with open_cache(tmp_path / "h5") as a, open_cache(tmp_path / "mm") as b:
        rows = [29, 0, 7, 7, 15]
        np.testing.assert_array_equal(a.read(rows), b.read(rows))
        np.testing.assert_array_equal(a[3], b[3])
        assert a.image_shape == (32, 32) and len(a) == 30


def test_rows_hold_the_right_images_and_labels(nih, tmp_path):
    preprocess(_cfg(nih, tmp_path / "c", clahe=False, brightness=5.0))
    images, index, manifest, _ = cache_contents(tmp_path / "c")
    ops = ImageOps(size=32, clahe=False, brightness=5.0)
    for row in (0, 13, 29):
        expected = load_image(index["source_path"][row], ops)
        np.testing.assert_array_equal(images[row], expected)
    csv = pd.read_csv(nih / "Data_Entry_2017_v2020.csv", dtype=str).set_index("Image Index")
    for _, rec in index.iterrows():
        findings = csv.loc[rec["image_id"], "Finding Labels"].split("|")
        for label in NIH_LABELS:
            assert rec[label] == ("1" if label in findings else "0")
    assert list(index["row"].astype(int)) == list(range(30))
    assert manifest["preprocessing"]["brightness"] == 5.0 and manifest["preprocessing"]["clahe"] is False


def test_workers_do_not_change_the_result(nih, tmp_path):
    preprocess(_cfg(nih, tmp_path / "w0"))
    preprocess(PreprocessConfig(src=nih, output=tmp_path / "w2", size=32, workers=2, chunk_size=3))
    assert_same_cache(tmp_path / "w0", tmp_path / "w2")


def test_manifest_and_index_content(nih, tmp_path):
    progress = RecordingProgress()
    result = preprocess(_cfg(nih, tmp_path / "c", seed=3, crop="letterbox", clahe_clip=3.0, clahe_tile=4), progress)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["tool"] == "cxr-tools" and manifest["tool_version"]
    assert manifest["created"]
    assert manifest["source"]["kind"] == "nih"
    assert manifest["source"]["root"] == str(nih.resolve())
    assert manifest["source"]["metadata_file"] == "Data_Entry_2017_v2020.csv"
    import hashlib

    sha = hashlib.sha256((nih / "Data_Entry_2017_v2020.csv").read_bytes()).hexdigest()
    assert manifest["source"]["metadata_sha256"] == sha
    assert manifest["labels"] == list(NIH_LABELS)
    assert manifest["image_size"] == [32, 32] and manifest["dtype"] == "uint8"
    assert manifest["preprocessing"] == {
        "grayscale": True,
        "interpolation": "area",
        "size": 32,
        "crop": "letterbox",
        "clahe": True,
        "clahe_clip": 3.0,
        "clahe_tile": 4,
        "brightness": 0.0,
    }
    assert manifest["storage"] == "hdf5"
    assert manifest["splits"]["seed"] == 3 and manifest["splits"]["fractions"] == [0.7, 0.1, 0.2]
    counts = manifest["counts"]
    assert counts["images"] == 30 and counts["patients"] == 10 and counts["rejected"] == 0 and counts["inputs"] == 30
    index = pd.read_csv(tmp_path / "c" / "index.csv", dtype=str, keep_default_na=False)
    assert list(index.columns) == [*INDEX_META_COLUMNS, *NIH_LABELS]
    assert counts["splits"] == {s: int((index["split"] == s).sum()) for s in ("train", "val", "test")}
    assert sum(counts["splits"].values()) == 30
    # patient-disjoint: each patient in one split
    assert index.groupby("patient_id")["split"].nunique().max() == 1
    assert index["patient_id"][0] == "00000001"  # leading zeros kept
    assert result.splits == counts["splits"] and result.patients == 10
    assert progress.done("preprocess") == 30
    assert not (tmp_path / "c" / "preprocess.journal").exists()


def test_seed_changes_split_not_images(nih, tmp_path):
    preprocess(_cfg(nih, tmp_path / "s0", seed=0))
    preprocess(_cfg(nih, tmp_path / "s1", seed=1))
    i0, x0, _, _ = cache_contents(tmp_path / "s0")
    i1, x1, _, _ = cache_contents(tmp_path / "s1")
    np.testing.assert_array_equal(i0, i1)
    assert list(x0["split"]) != list(x1["split"])


def test_views_filter(nih, tmp_path):
    result = preprocess(_cfg(nih, tmp_path / "ap", views=("AP",)))
    _, index, manifest, _ = cache_contents(tmp_path / "ap")
    assert 0 < result.images < 30 and set(index["view"]) == {"AP"}
    assert manifest["source"]["views"] == ["AP"]
