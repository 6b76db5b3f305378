"""Property-based fuzzing of the decoders: random bytes, and real PNG / JPEG / TIFF / DICOM files with bytes
overwritten or cut, either decode to a 2-D image or raise ImageDecodeError with a reason; nothing else escapes
(a batch worker turns anything else into an opaque rejection, and a crash would lose the batch)."""

from __future__ import annotations

import io
import tempfile
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
from dicom_fixtures import dx_dataset, set_pixels
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from pydicom import uid

from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, decode_image, load_image
from cxr_tools.data.decoding.pipeline import ChunkTask, process_chunk

# derandomized and without an example database: the same examples every run; Hypothesis' cache of the constants
# it finds in the source goes to the temp dir, so nothing is written into the repository
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cxr-tools-hypothesis")
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)
EXTENSIONS = (".png", ".jpg", ".tif", ".bmp", ".dcm", "")


@cache
def seeds() -> dict[str, bytes]:
    """Small valid files of each decoder: PNG, JPEG, progressive JPEG, TIFF, DICOM raw / JPEG-LS / J2K / RLE."""
    img = ((np.add.outer(np.arange(48), np.arange(40)) * 3) % 256).astype(np.uint8)  # J2K needs 32+ px
    out = {
        ".png": cv2.imencode(".png", img)[1].tobytes(),
        ".jpg": cv2.imencode(".jpg", img)[1].tobytes(),
        ".jpeg": cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        ".tif": cv2.imencode(".tif", img.astype(np.uint16) * 200)[1].tobytes(),
    }
    for name, tsyntax in (("raw", None), ("jls", uid.JPEGLSLossless), ("j2k", uid.JPEG2000Lossless)):
        ds = dx_dataset()
        set_pixels(ds, img.astype(np.uint16) * 16, bits_stored=12)
        if tsyntax is not None:
            ds.compress(tsyntax)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[f".{name}.dcm"] = buf.getvalue()
    ds = dx_dataset()
    set_pixels(ds, img)
    ds.compress(uid.RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out[".rle.dcm"] = buf.getvalue()
    assert pydicom.dcmread(io.BytesIO(out[".jls.dcm"])).file_meta.TransferSyntaxUID == uid.JPEGLSLossless
    return out


def _decodes_or_refuses(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        try:
            img = decode_image(path)
        except ImageDecodeError as exc:
            assert exc.reason and exc.path == str(path)
        else:
            assert img.ndim == 2 and img.size > 0
            out = load_image(path, ImageOps(size=16, clahe_tile=4))
            assert out.shape == (16, 16) and out.dtype == np.uint8


@FUZZ
@given(data=st.binary(max_size=1024), suffix=st.sampled_from(EXTENSIONS))
def test_random_bytes_decode_or_raise_a_reason(data, suffix):
    _decodes_or_refuses(data, suffix)


@FUZZ
@given(
    kind=st.sampled_from(sorted(seeds())),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    keep=st.floats(0.05, 1.0),
)
@example(kind=".raw.dcm", edits=[(0.06107858867210215, 0)], keep=1.0)  # a VR pydicom raised NotImplementedError on
def test_damaged_real_files_decode_or_raise_a_reason(kind, edits, keep):
    data = bytearray(seeds()[kind])
    for where, value in edits:
        data[int(where * len(data))] = value
    _decodes_or_refuses(bytes(data[: max(1, int(len(data) * keep))]), Path(kind).suffix)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(chunk=st.lists(st.sampled_from(sorted(seeds())), min_size=1, max_size=5), cut=st.integers(0, 4))
def test_a_chunk_never_raises_and_accounts_for_every_input(chunk, cut):
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, kind in enumerate(chunk):
            data = seeds()[kind]
            path = Path(tmp) / f"{i}{Path(kind).suffix}"
            path.write_bytes(data[: len(data) // 3] if i == cut else data)
            paths.append(str(path))
        result = process_chunk(ChunkTask(0, tuple(paths), ImageOps(size=16, clahe_tile=4)))
        assert result.images.shape[0] + len(result.rejected) == len(paths)
        assert all(reason for _, reason in result.rejected)
