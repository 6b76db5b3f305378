"""Same configuration -> byte-identical dataset, whatever the number of workers; DICOM variants decode back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.runtime.progress import RecordingProgress


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("layout", "fmt"), [("nih", "png"), ("nih", "dicom"), ("chexpert", "png")])
def test_same_config_gives_identical_bytes(tmp_path, layout, fmt):
    a = generate(SyntheticConfig(dest=tmp_path / "a", patients=6, size=40, seed=11, layout=layout, format=fmt))
    b = generate(SyntheticConfig(dest=tmp_path / "b", patients=6, size=40, seed=11, layout=layout, format=fmt))
    ta, tb = tree(a.dest), tree(b.dest)
    assert len(ta) > a.n_images  # images plus metadata
    assert ta == tb


def test_workers_do_not_change_the_output(tmp_path):
    progress = RecordingProgress()
    a = generate(SyntheticConfig(dest=tmp_path / "a", patients=9, size=40, seed=2), progress)
    b = generate(SyntheticConfig(dest=tmp_path / "b", patients=9, size=40, seed=2, workers=2))
    assert tree(a.dest) == tree(b.dest)
    assert progress.done("synthetic images") == a.n_images


def test_different_seeds_differ(tmp_path):
    a = generate(SyntheticConfig(dest=tmp_path / "a", patients=4, size=40, seed=0))
    b = generate(SyntheticConfig(dest=tmp_path / "b", patients=4, size=40, seed=1))
    ia = cv2.imread(str(a.dest / "images" / "00000001_000.png"), 0)
    ib = cv2.imread(str(b.dest / "images" / "00000001_000.png"), 0)
    assert np.abs(ia.astype(int) - ib.astype(int)).mean() > 2
    assert (a.dest / "Data_Entry_2017_v2020.csv").read_bytes() != (b.dest / "Data_Entry_2017_v2020.csv").read_bytes()


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """The standard display pipeline: rescale, linear VOI window, invert MONOCHROME1 -> 8 bit."""
    x = ds.pixel_array.astype(np.float64)
    if "RescaleSlope" in ds:
        x = x * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    if "WindowCenter" in ds:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    else:
        y = x * 255.0 / (2**ds.BitsStored - 1)
    y = np.clip(np.round(y), 0, 255)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 255 - y
    return y.astype(np.uint8)


def test_dicom_variants_read_back_and_match_the_png_pixels(tmp_path):
    dcm = generate(SyntheticConfig(dest=tmp_path / "d", patients=5, size=36, seed=4, format="dicom"))
    png = generate(SyntheticConfig(dest=tmp_path / "p", patients=5, size=36, seed=4))
    df = pd.read_csv(dcm.metadata_csv)
    assert df["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.dcm").all()
    seen = set()
    uids = set()
    for name in df["Image Index"]:
        ds = pydicom.dcmread(dcm.dest / "images" / name)
        assert ds.Modality == "DX" and ds.Rows == ds.Columns == 36
        assert ds.PatientID == name[:8]
        seen.add((ds.PhotometricInterpretation, int(ds.BitsAllocated), int(ds.BitsStored)))
        uids.add(ds.SOPInstanceUID)
        if ds.BitsStored > 8:
            assert {"RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"} <= set(ds.dir())
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert ds.pixel_array.mean() > 2**ds.BitsStored / 2 * 0.6  # stored inverted: mostly bright
        expected = cv2.imread(str(png.dest / "images" / name.replace(".dcm", ".png")), 0)
        np.testing.assert_array_equal(_display(ds), expected)
    assert seen == {("MONOCHROME2", 8, 8), ("MONOCHROME1", 8, 8), ("MONOCHROME2", 16, 12), ("MONOCHROME1", 16, 16)}
    assert len(uids) == len(df)


def test_output_does_not_depend_on_the_python_hash_seed(tmp_path):
    """Separate interpreters (as on a cluster, or in the worker pool) must write the same bytes."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from cxr_tools.data.synthetic import SyntheticConfig, generate; "
        "generate(SyntheticConfig(dest=Path(sys.argv[1]), patients=25, size=32, seed=3, layout='chexpert'))"
    )
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, env=env)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
