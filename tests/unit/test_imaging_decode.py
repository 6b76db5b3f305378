"""decode_image / to_uint8 on real files written by the tests: PNG, JPEG, 16-bit, bad files, DICOM."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_fixtures import dx_dataset, set_pixels
from pydicom.dataset import Dataset

from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, decode_image, load_image, to_uint8
from cxr_tools.errors import CxrError, InputError


def gradient(h: int = 37, w: int = 53, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    return (np.add.outer(np.arange(h), np.arange(w)) * (top // (h + w))).astype(dtype)


def write_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    frames: int = 1,
    preamble: bool = True,
    **tags: object,
) -> Path:
    ds = dx_dataset()
    set_pixels(ds, arr, photometric=photometric, bits_stored=bits_stored)
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=preamble)
    return path


# ----------------------------------------------------------------------------------------------- raster files


def test_8bit_png_roundtrips_unchanged(tmp_path):
    img = gradient()
    cv2.imwrite(str(tmp_path / "a.png"), img)
    out = decode_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (37, 53)
    np.testing.assert_array_equal(out, img)


def test_rgb_png_and_rgba_become_gray(tmp_path):
    img = gradient()
    rgb = np.dstack([img, img, img])
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    for name in ("rgb.png", "rgba.png"):
        out = decode_image(tmp_path / name)
        assert out.ndim == 2 and out.dtype == np.uint8
        np.testing.assert_array_equal(out, img)


def test_colour_jpeg_becomes_gray(tmp_path):
    img = gradient(64, 48)
    cv2.imwrite(str(tmp_path / "c.jpg"), np.dstack([img, img, img]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_image(tmp_path / "c.jpg")
    assert out.shape == (64, 48) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 3


def test_16bit_png_stays_16bit_and_to_uint8_stretches(tmp_path):
    img = np.zeros((20, 30), np.uint16)
    img[:, 10:] = 1000
    img[:, 20:] = 3000  # 12-bit-like values in a 16-bit PNG
    cv2.imwrite(str(tmp_path / "w.png"), img)
    out = decode_image(tmp_path / "w.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)
    u8 = to_uint8(out)
    assert u8.dtype == np.uint8
    assert (u8[0, 0], u8[0, 15], u8[0, 25]) == (0, 85, 255)


def test_to_uint8_passes_uint8_through_and_handles_float_and_flat():
    a = gradient()
    assert to_uint8(a) is a
    f = np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float64)
    np.testing.assert_array_equal(to_uint8(f), [[0, 128], [255, 0]])
    assert not to_uint8(np.full((4, 4), 7, np.uint16)).any()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"just some notes, not an image\n", "text file"),
        (b"<!DOCTYPE html><html>login required</html>", "HTML"),
        (bytes(range(256)) * 4, "not a decodable image"),
    ],
)
def test_bad_files_raise_short_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)
    assert isinstance(info.value, InputError) and isinstance(info.value, CxrError)


def test_truncated_png_and_jpeg_are_rejected(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    for name in ("t.png", "t.jpg"):
        ok, enc = cv2.imencode("." + name.split(".")[1], img)
        assert ok
        (tmp_path / name).write_bytes(enc.tobytes()[: enc.size * 2 // 3])
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(tmp_path / name)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(tmp_path)


def test_decode_error_survives_pickling_from_worker_processes(tmp_path):
    err = ImageDecodeError(tmp_path / "x.png", "truncated PNG (no IEND chunk)")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageDecodeError)
    assert back.reason == err.reason and back.path == err.path and str(back) == str(err)


def test_load_image_end_to_end_on_odd_sized_rgb(tmp_path):
    img = gradient(97, 61)
    cv2.imwrite(str(tmp_path / "odd.png"), np.dstack([img, img, img]))
    out = load_image(tmp_path / "odd.png", ImageOps(size=33))
    assert out.shape == (33, 33) and out.dtype == np.uint8 and out.flags.c_contiguous


# ---------------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr = np.full((16, 24), 3000, np.uint16)
    arr[:, :8] = 200  # a dark-valued (low) pixel in MONOCHROME1 means bright
    path = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1", bits_stored=12)
    out = to_uint8(decode_image(path))
    assert out[0, 0] == 255 and out[0, 20] == 0
    mono2 = to_uint8(decode_image(write_dicom(tmp_path / "m2.dcm", arr, bits_stored=12)))
    assert mono2[0, 0] == 0 and mono2[0, 20] == 255


def test_dicom_12bit_rescale_and_window(tmp_path):
    arr = np.zeros((10, 40), np.uint16)
    arr[:, 10:20] = 1000
    arr[:, 20:30] = 1500
    arr[:, 30:] = 4095
    # values = 2 * raw - 1000: 0 -> -1000, 1000 -> 1000, 1500 -> 2000, 4095 -> 7190; window [1000, 3000]
    path = write_dicom(tmp_path / "w.dcm", arr, bits_stored=12, slope=2, intercept=-1000, center=2000, width=2000)
    out = decode_image(path)
    assert out.dtype == np.uint8
    assert out[0, 0] == 0 and out[0, 15] == 0 and out[0, 35] == 255
    assert 120 <= out[0, 25] <= 135  # the middle of the window


def test_dicom_window_monochrome1(tmp_path):
    arr = np.zeros((8, 20), np.uint16)
    arr[:, 10:] = 4000
    path = write_dicom(tmp_path / "w1.dcm", arr, photometric="MONOCHROME1", bits_stored=12, center=2048, width=4096)
    out = decode_image(path)
    assert out[0, 0] == 255 and out[0, 15] < 10


def test_dicom_16bit_and_8bit(tmp_path):
    arr16 = np.zeros((12, 12), np.uint16)
    arr16[6:] = 60000
    out16 = decode_image(write_dicom(tmp_path / "s16.dcm", arr16))
    assert out16.dtype == np.uint16 and out16[0, 0] == 0 and out16[11, 0] == 60000
    arr8 = gradient(12, 14)
    out8 = decode_image(write_dicom(tmp_path / "s8.dcm", arr8))
    assert out8.dtype == np.uint8
    np.testing.assert_array_equal(out8, arr8)


def test_dicom_rescale_without_window_is_min_max(tmp_path):
    arr = np.zeros((6, 6), np.uint16)
    arr[3:] = 100
    out = to_uint8(decode_image(write_dicom(tmp_path / "r.dcm", arr, bits_stored=12, slope=1.5, intercept=-1024)))
    assert out[0, 0] == 0 and out[5, 0] == 255


def test_dicom_multiframe_is_reported_not_cut_to_a_frame(tmp_path):
    frames = np.stack([np.full((8, 8), 10, np.uint8), np.full((8, 8), 200, np.uint8)])
    path = write_dicom(tmp_path / "mf.dcm", frames, frames=2)
    with pytest.raises(ImageDecodeError, match="multi-frame") as info:
        decode_image(path)
    assert "2 frames" in info.value.reason
    one = write_dicom(tmp_path / "one.dcm", frames[1], NumberOfFrames=1)  # an explicit single frame is an image
    assert int(decode_image(one)[0, 0]) == 200


def test_dicom_found_by_magic_without_extension(tmp_path):
    path = write_dicom(tmp_path / "1.2.3.4", np.full((5, 7), 9, np.uint8))
    assert decode_image(path).shape == (5, 7)


def test_corrupt_dicom_and_text_named_dcm(tmp_path):
    good = write_dicom(tmp_path / "g.dcm", np.full((32, 32), 9, np.uint16))
    data = good.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 1000])
    (tmp_path / "text.dcm").write_text("patient list\nnothing here\n")
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image(tmp_path / "cut.dcm")
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image(tmp_path / "text.dcm")


def test_jpeg_with_trailer_after_end_marker_is_accepted(tmp_path):
    img = gradient(40, 40)
    enc = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "trailer.jpg").write_bytes(enc + b"\x00" * 200 + b"VENDOR-TRAILER" * 10)
    assert decode_image(tmp_path / "trailer.jpg").shape == (40, 40)


def test_reused_read_buffer_never_leaks_between_images(tmp_path):
    big = np.random.default_rng(1).integers(0, 255, (300, 300), dtype=np.uint8)
    small = gradient(9, 9)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    cv2.imwrite(str(tmp_path / "small.png"), small)
    first = decode_image(tmp_path / "big.png")
    second = decode_image(tmp_path / "small.png")
    third = decode_image(tmp_path / "big.png")
    np.testing.assert_array_equal(first, big)  # still intact after later reads
    np.testing.assert_array_equal(second, small)
    np.testing.assert_array_equal(third, big)
    (tmp_path / "small.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(tmp_path / "small.png")  # a stale buffer must not make an empty file decodable


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    arr = np.zeros((6, 12), np.uint16)
    arr[:, 6:] = 1000
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = (4095 - np.arange(4096, dtype="<u2")).tobytes()  # an inverting LUT: raw 0 shows white
    path = write_dicom(tmp_path / "lut.dcm", arr, bits_stored=12, VOILUTSequence=[item])
    out = decode_image(path)
    assert out.dtype == np.uint8
    assert out[0, 0] == 255 and 185 <= out[0, 8] <= 195  # (4095 - 1000) / 4095 * 255 = 192.7
