"""Bad inputs: corrupt, zero-byte, truncated, non-image files and missing files go to rejected.csv; RGB,
16-bit, odd-sized and JPEG files are stored; the rest of the batch continues; all-failed is an error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from preprocess_fixtures import add_bad_inputs, cache_contents, make_nih

from cxr_tools.data.caches.format import is_complete, open_cache
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess
from cxr_tools.errors import DataError


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_rejected_batch_continues(tmp_path, workers):
    src = make_nih(tmp_path / "nih", patients=5, per_patient=2)
    expect = add_bad_inputs(src)
    out = tmp_path / "cache"
    result = preprocess(PreprocessConfig(src=src, output=out, size=32, workers=workers, chunk_size=3))
    assert is_complete(out)
    images, index, manifest, rejected = cache_contents(out)
    assert list(rejected.columns) == ["source_path", "reason"]
    assert {Path(p).name for p in rejected["source_path"]} == expect["rejected"]
    assert (rejected["reason"].str.len() > 0).all()
    reasons = dict(zip((Path(p).name for p in rejected["source_path"]), rejected["reason"], strict=True))
    assert "empty" in reasons["zero.png"] and "truncated" in reasons["truncated.png"]
    assert "not found" in reasons["missing.png"]
    stored = set(index["image_id"])
    assert expect["kept"] <= stored and not (expect["rejected"] & stored)
    assert result.images == len(index) == 10 + len(expect["kept"]) == images.shape[0]
    assert result.rejected == manifest["counts"]["rejected"] == len(expect["rejected"])
    assert manifest["counts"]["inputs"] == result.images + result.rejected
    assert list(index["row"].astype(int)) == list(range(len(index)))
    with open_cache(out) as cache:  # odd-sized, RGB and 16-bit files became ordinary [32, 32] rows
        for name in expect["kept"]:
            row = int(index.index[index["image_id"] == name][0])
            img = cache[row]
            assert img.shape == (32, 32) and img.dtype == np.uint8 and img.std() > 0


def test_every_input_failing_is_an_error(tmp_path):
    src = make_nih(tmp_path / "nih", patients=2, per_patient=2)
    for png in (src / "images").glob("*.png"):
        png.write_bytes(b"corrupt")
    out = tmp_path / "cache"
    with pytest.raises(DataError, match="None of the 4 inputs"):
        preprocess(PreprocessConfig(src=src, output=out, size=32, workers=0))
    assert not is_complete(out)
    assert len((out / "rejected.csv").read_text().strip().splitlines()) == 5  # header + 4 reasons


def test_sixteen_bit_uses_full_range(tmp_path):
    src = make_nih(tmp_path / "nih", patients=1, per_patient=1)
    img16 = np.tile(np.linspace(1000, 3000, 48, dtype=np.uint16), (48, 1))
    cv2.imwrite(str(src / "images" / "00000001_000.png"), img16)
    preprocess(PreprocessConfig(src=src, output=tmp_path / "c", size=32, workers=0, clahe=False))
    images, *_ = cache_contents(tmp_path / "c")
    assert images[0].min() <= 5 and images[0].max() >= 250  # a 12-bit range stretched, not truncated to black
