"""The odd files of real folders (tests/quirks_corpus.py) through `preprocess` and `predict`: each one decoded
correctly or refused with its reason, nothing crashing the batch, nothing lost, exit 3 on partial success."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from predict_fixtures import make_model_dir, read_rows
from preprocess_fixtures import cache_contents
from quirks_corpus import CLASS, gradient, make_quirks
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, decode_image, load_image
from cxr_tools.data.predict_io.inputs import list_inputs
from cxr_tools.engine.predict import PredictConfig, run_predict
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture
def quirks(tmp_path):
    return make_quirks(tmp_path / "corpus")


def test_preprocess_keeps_or_rejects_every_quirk_with_its_reason(quirks, tmp_path):
    out = tmp_path / "cache"
    result = preprocess(PreprocessConfig(src=quirks.root, output=out, size=32, workers=0, clahe=False))
    assert result.source_kind == "folder"
    assert (result.images, result.rejected) == (len(quirks.kept), len(quirks.refused))
    _, index, _, rejected = cache_contents(out)
    reasons = dict(zip(rejected["source_path"], rejected["reason"], strict=True))
    assert set(reasons) == {str(p) for p in quirks.refused}
    for path, text in quirks.refused.items():
        assert text in reasons[str(path)], (path.name, reasons[str(path)])
    assert set(index["image_id"]) == {p.relative_to(quirks.root).as_posix() for p in quirks.kept}

    # what the pixels became: EXIF orientation applied, alpha dropped, CMYK as its colours
    ops = ImageOps(size=32, clahe=False)
    d = tmp_path / "expected"
    d.mkdir()
    g = gradient(40, 56)
    cv2.imwrite(str(d / "upright.png"), np.rot90(g, k=-1))  # orientation 6: rotate 90° clockwise
    rgb = np.dstack([g, 255 - g, g // 2])
    cv2.imwrite(str(d / "rgb.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    row = {image_id: int(r) for image_id, r in zip(index["image_id"], index["row"], strict=True)}
    with open_cache(out) as cache:
        stored = {name: cache[row[f"{CLASS}/{name}"]] for name in ("exif-rotated.jpg", "rgba.png", "cmyk.jpg")}
    assert np.abs(stored["exif-rotated.jpg"].astype(int) - load_image(d / "upright.png", ops)).mean() < 2
    np.testing.assert_array_equal(stored["rgba.png"], load_image(d / "rgb.png", ops))
    assert np.abs(stored["cmyk.jpg"].astype(int) - load_image(d / "rgb.png", ops)).mean() < 3


def test_every_kept_quirk_decodes_to_its_shape(quirks):
    for path, shape in quirks.kept.items():
        img = decode_image(path)
        assert img.shape == shape and img.ndim == 2 and float(img.std()) > 0, path.name


def test_predict_gives_every_quirk_a_row(quirks, tmp_path):
    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "pred.csv"
    res = run_predict(PredictConfig(input=quirks.root, output=out, model=model, workers=0, batch_size=4))
    rows = {r["path"]: r for r in read_rows(out)}
    assert set(rows) == {str(p) for p in [*quirks.kept, *quirks.refused]}
    assert (res.n_ok, res.n_failed) == (len(quirks.kept), len(quirks.refused))
    for path, text in quirks.refused.items():
        assert text in rows[str(path)]["error"] and rows[str(path)]["Effusion"] == "", path.name
    for path in quirks.kept:
        assert rows[str(path)]["error"] == "" and 0 <= float(rows[str(path)]["Effusion"]) <= 1, path.name


def test_cli_exits_3_and_names_each_failing_file(quirks, tmp_path):
    model = make_model_dir(tmp_path / "model")
    res = runner.invoke(app, ["predict", str(quirks.root), "-o", str(tmp_path / "p.csv"), "--model", str(model)])
    assert res.exit_code == 3, res.output
    for path, text in quirks.refused.items():
        assert f"{path.name}: " in res.stderr and text in res.stderr, path.name
    cache = str(tmp_path / "c")
    res = runner.invoke(app, ["preprocess", str(quirks.root), "-o", cache, "--size", "32", "--workers", "0"])
    assert res.exit_code == 3, res.output
    assert f"Partial success: {len(quirks.refused)} inputs failed" in res.stderr


def test_a_list_naming_a_folder_a_loop_and_a_missing_file(quirks, tmp_path):
    d = quirks.root / CLASS
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{d / 'folder-named.png'}\n{d / 'loop.png'}\n{d / 'gone.png'}\n{d / 'tiny.png'}\n")
    out = tmp_path / "pred.csv"
    res = run_predict(PredictConfig(input=listing, output=out, model=make_model_dir(tmp_path / "m"), workers=0))
    errors = [r["error"] for r in read_rows(out)]
    assert "is a directory" in errors[0] and "symbolic links" in errors[1] and "not found" in errors[2]
    assert errors[3] == "" and (res.n_ok, res.n_failed) == (1, 3)


def test_a_directory_loop_is_walked_once(quirks):
    items = list_inputs(quirks.root).items
    assert len(items) == len(quirks.kept) + len(quirks.refused)
    assert not any("back-up" in item.path for item in items)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading a file")
def test_unreadable_file_is_refused(quirks):
    assert quirks.unreadable is not None
    with pytest.raises(ImageDecodeError, match="permission denied"):
        decode_image(quirks.unreadable)


def test_dicom_samples_through_preprocess_and_predict(tmp_path):
    """pydicom's compressed samples as a DICOM source, a class folder and a predict folder; refusals are rows."""
    from pydicom.data import get_testdata_file

    # one file per hard transfer syntax: JPEG extended 12-bit, JPEG-LS lossless and near-lossless, JPEG
    # lossless SV1, JPEG baseline, JPEG 2000 lossless and lossy, RLE, deflated, big and implicit little endian
    names = ["JPEG-lossy.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_gdcm.dcm"]
    names += ["SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm", "693_J2KI.dcm", "MR_small_RLE.dcm"]
    names += ["image_dfl.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm", "SC_rgb_rle_2frame.dcm", "test-SR.dcm"]
    refused = {"SC_rgb_rle_2frame.dcm": "multi-frame", "test-SR.dcm": "without pixel data"}
    src = tmp_path / "dicoms" / "cls"
    src.mkdir(parents=True)
    for name in names:
        (src / name).write_bytes(Path(str(get_testdata_file(name, download=False))).read_bytes())
    for kind in ("dicom", "folder"):
        out = tmp_path / f"cache-{kind}"
        result = preprocess(
            PreprocessConfig(src=src.parent, output=out, source=kind, views=("all",), size=32, workers=0)
        )
        _, index, _, rejected = cache_contents(out)
        reasons = {Path(p).name: r for p, r in zip(rejected["source_path"], rejected["reason"], strict=True)}
        assert set(reasons) == set(refused) and all(refused[n] in reasons[n] for n in refused), kind
        assert result.images == len(names) - len(refused) == len(index), kind
    res = run_predict(
        PredictConfig(input=src, output=tmp_path / "p.csv", model=make_model_dir(tmp_path / "m"), workers=0)
    )
    errors = {Path(r["path"]).name: r["error"] for r in read_rows(tmp_path / "p.csv")}
    assert {n for n, e in errors.items() if e} == set(refused) and res.n_ok == len(names) - len(refused)
