"""Every common DICOM transfer syntax decodes: pydicom's bundled compressed samples against their references,
12-bit DX images compressed here with pydicom's encoders, colour and palette files, and the stated refusals."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from dicom_fixtures import dx_dataset, set_pixels
from pydicom import uid
from pydicom.data import get_testdata_file

from cxr_tools.data.decoding.dicom_pixels import PLUGIN_PACKAGES, _pixel_reason, repair_sequential_scans
from cxr_tools.data.decoding.imaging import ImageDecodeError, decode_image, to_uint8


def bundled(name: str) -> str:
    """A test file pydicom ships in its wheel (never one it would download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return str(path)


def decoded(name: str) -> np.ndarray:
    return to_uint8(decode_image(bundled(name)))


def syntax(name: str) -> str:
    return pydicom.dcmread(bundled(name), stop_before_pixels=True).file_meta.TransferSyntaxUID


# (file, its transfer syntax, the reference it must equal exactly)
LOSSLESS = [
    ("MR_small_RLE.dcm", uid.RLELossless, "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", uid.JPEG2000Lossless, "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", uid.JPEGLSLossless, "MR_small.dcm"),
    ("MR_small_implicit.dcm", uid.ImplicitVRLittleEndian, "MR_small.dcm"),
    ("MR_small_expb.dcm", uid.ExplicitVRBigEndian, "MR_small.dcm"),
    ("MR_small_bigendian.dcm", uid.ExplicitVRBigEndian, "MR_small.dcm"),
    ("SC_rgb_jpeg_gdcm.dcm", uid.JPEGLosslessSV1, "SC_rgb_rle.dcm"),
    ("SC_rgb_gdcm_KY.dcm", uid.JPEG2000, "SC_rgb_rle.dcm"),
    ("SC_rgb_rle_16bit.dcm", uid.RLELossless, "SC_rgb_rle.dcm"),
    ("SC_rgb_rle_32bit.dcm", uid.RLELossless, "SC_rgb_rle.dcm"),
    ("SC_rgb_small_odd_big_endian.dcm", uid.ExplicitVRBigEndian, "SC_rgb_small_odd.dcm"),
    ("rtdose_rle_1frame.dcm", uid.RLELossless, "rtdose_1frame.dcm"),
    ("liver_expb_1frame.dcm", uid.ExplicitVRBigEndian, "liver_1frame.dcm"),
    # the 12-bit JPEG whose scan header old writers got wrong, against pydicom's fixed copy of it
    ("JPEG-lossy.dcm", uid.JPEGExtended12Bit, "JPGExtended.dcm"),
]

# (file, its transfer syntax, reference, largest and mean gray-level difference allowed)
LOSSY = [
    ("SC_rgb_jpeg_dcmtk.dcm", uid.JPEGBaseline8Bit, "SC_rgb_rle.dcm", 3, 0.5),
    ("SC_rgb_jpeg_lossy_gdcm.dcm", uid.JPEGBaseline8Bit, "SC_rgb_rle.dcm", 10, 0.5),
    ("SC_rgb_dcmtk_+eb+cr.dcm", uid.JPEGBaseline8Bit, "SC_rgb_rle.dcm", 3, 0.5),
    ("SC_rgb_dcmtk_+eb+cy+n1.dcm", uid.JPEGBaseline8Bit, "SC_rgb_rle.dcm", 10, 1.0),
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", uid.JPEGBaseline8Bit, "SC_rgb_rle.dcm", 3, 0.5),
    ("SC_rgb_jls_lossy_line.dcm", uid.JPEGLSNearLossless, "SC_rgb_rle.dcm", 3, 1.0),
    ("SC_rgb_jls_lossy_sample.dcm", uid.JPEGLSNearLossless, "SC_rgb_rle.dcm", 3, 1.0),
    ("SC_rgb_small_odd_jpeg.dcm", uid.JPEGBaseline8Bit, "SC_rgb_small_odd.dcm", 3, 1.0),
]

# compressed files without a bundled reference: they decode to a non-flat image of the stored size
NO_REFERENCE = [
    ("JPGExtended.dcm", uid.JPEGExtended12Bit),
    ("JPEG2000.dcm", uid.JPEG2000),
    ("693_J2KI.dcm", uid.JPEG2000),
    ("J2K_pixelrep_mismatch.dcm", uid.JPEG2000Lossless),
    ("GDCMJ2K_TextGBR.dcm", uid.JPEG2000Lossless),
    ("examples_jpeg2k.dcm", uid.JPEG2000Lossless),
    ("JPEGLSNearLossless_08.dcm", uid.JPEGLSNearLossless),
    ("JPEGLSNearLossless_16.dcm", uid.JPEGLSNearLossless),
    ("SC_jpeg_no_color_transform.dcm", uid.JPEGBaseline8Bit),
    ("image_dfl.dcm", uid.DeflatedExplicitVRLittleEndian),
    ("ExplVR_BigEnd.dcm", uid.ExplicitVRBigEndian),
    ("SC_ybr_full_422_uncompressed.dcm", uid.ExplicitVRLittleEndian),
]


@pytest.mark.parametrize(("name", "tsyntax", "reference"), LOSSLESS, ids=[c[0] for c in LOSSLESS])
def test_lossless_files_equal_their_reference(name, tsyntax, reference):
    assert syntax(name) == tsyntax
    out, ref = decoded(name), decoded(reference)
    assert out.shape == ref.shape and ref.std() > 0
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize(("name", "tsyntax", "reference", "worst", "mean"), LOSSY, ids=[c[0] for c in LOSSY])
def test_lossy_files_stay_close_to_their_reference(name, tsyntax, reference, worst, mean):
    assert syntax(name) == tsyntax
    diff = np.abs(decoded(name).astype(int) - decoded(reference))
    assert diff.max() <= worst and diff.mean() <= mean


@pytest.mark.parametrize(("name", "tsyntax"), NO_REFERENCE, ids=[c[0] for c in NO_REFERENCE])
def test_other_compressed_samples_decode(name, tsyntax):
    ds = pydicom.dcmread(bundled(name), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == tsyntax
    out = decode_image(bundled(name))
    assert out.shape == (ds.Rows, ds.Columns) and float(out.std()) > 0


def _dx_file(path: Path, img: np.ndarray, tsyntax: str | None, **encode: object) -> Path:
    ds = dx_dataset(WindowCenter=1500, WindowWidth=2600)
    set_pixels(ds, img, bits_stored=12)
    if tsyntax is not None:
        ds.compress(tsyntax, **encode)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("tsyntax", "encode", "tolerance"),
    [
        (uid.RLELossless, {}, 0),
        (uid.JPEGLSLossless, {}, 0),
        (uid.JPEG2000Lossless, {}, 0),
        (uid.JPEGLSNearLossless, {"jls_error": 4}, 1),  # 4 of 4095 stored levels: at most 1 of 255 after windowing
        (uid.JPEG2000, {"j2k_cr": [4]}, 6),
    ],
    ids=["rle", "jpeg-ls", "j2k-lossless", "jpeg-ls-near", "j2k-lossy"],
)
def test_12bit_dx_compressed_here_decodes_like_the_uncompressed_file(tmp_path, tsyntax, encode, tolerance):
    rng = np.random.default_rng(0)
    img = (np.add.outer(np.arange(48), np.arange(40)) * 40 + rng.integers(0, 60, (48, 40))).astype(np.uint16)
    ref = decode_image(_dx_file(tmp_path / "plain.dcm", img, None))
    out = decode_image(_dx_file(tmp_path / "packed.dcm", img, tsyntax, **encode))
    assert pydicom.dcmread(tmp_path / "packed.dcm").file_meta.TransferSyntaxUID == tsyntax
    assert out.dtype == ref.dtype == np.uint8 and ref.std() > 0  # windowed to 8 bits
    assert np.abs(out.astype(int) - ref).max() <= tolerance


def test_deflated_file_written_here_decodes(tmp_path):
    img = (np.add.outer(np.arange(30), np.arange(20)) * 100).astype(np.uint16)
    ref = decode_image(_dx_file(tmp_path / "plain.dcm", img, None))
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(decode_image(tmp_path / "deflated.dcm"), ref)


def test_colour_dicom_is_converted_like_a_colour_png(tmp_path):
    ds = pydicom.dcmread(bundled("SC_rgb_rle.dcm"))
    rgb = ds.pixel_array
    cv2.imwrite(str(tmp_path / "same.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_image(bundled("SC_rgb_rle.dcm")), decode_image(tmp_path / "same.png"))


def test_palette_colour_dicom_goes_through_its_lookup_table(tmp_path):
    rng = np.random.default_rng(1)
    lut = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    index = rng.integers(0, 256, (20, 24)).astype(np.uint8)
    ds = dx_dataset()
    set_pixels(ds, index)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for j, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (lut[:, j].astype("<u2") * 257).tobytes())
    ds.save_as(tmp_path / "pal.dcm", enforce_file_format=True)
    rgb16 = lut[index].astype(np.uint16) * 257  # what the 16-bit table maps each index to
    cv2.imwrite(str(tmp_path / "same.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_image(tmp_path / "pal.dcm"), decode_image(tmp_path / "same.png"))


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("SC_rgb_rle_2frame.dcm", ("multi-frame", "2 frames", "export the frame")),
        ("rtdose.dcm", ("multi-frame", "15 frames")),
        ("examples_ybr_color.dcm", ("multi-frame", "30 frames")),
        ("test-SR.dcm", ("without pixel data",)),
        ("JPEG2000-embedded-sequence-delimiter.dcm", ("JPEG 2000", "failed to read the header")),
        ("MR_truncated.dcm", ("less than expected",)),
    ],
)
def test_refusals_name_the_reason_never_a_missing_plugin(name, words):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bundled(name))
    for word in words:
        assert word in info.value.reason
    assert "install" not in info.value.reason


def test_a_really_missing_plugin_is_named_with_what_to_do():
    exc = RuntimeError(
        "Unable to decompress 'JPEG-LS Lossless Image Compression' pixel data because all plugins are missing "
        "dependencies:\n    gdcm - requires gdcm>=3.0.10\n    pyjpegls - requires numpy and pyjpegls>=1.2"
    )
    reason = _pixel_reason(exc, uid.JPEGLSLossless)
    assert "no decoder installed for JPEG-LS Lossless" in reason and "pyjpegls>=1.2" in reason
    assert all(p in reason for p in PLUGIN_PACKAGES) and "reinstall" in reason


def test_scan_header_repair_touches_only_broken_sequential_jpegs(tmp_path):
    from pydicom.encaps import generate_frames

    broken = next(generate_frames(pydicom.dcmread(bundled("JPEG-lossy.dcm")).PixelData, number_of_frames=1))
    fixed = next(generate_frames(pydicom.dcmread(bundled("JPGExtended.dcm")).PixelData, number_of_frames=1))
    assert repair_sequential_scans(broken) == fixed
    assert repair_sequential_scans(fixed) is None
    img = (np.add.outer(np.arange(40), np.arange(40)) * 3).astype(np.uint8)
    baseline = cv2.imencode(".jpg", img)[1].tobytes()
    progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert repair_sequential_scans(baseline) is None and repair_sequential_scans(progressive) is None
    assert repair_sequential_scans(b"not a jpeg") is None


def test_dicom_bytes_in_memory_match_the_file(tmp_path):
    buf = io.BytesIO(Path(bundled("MR_small_jpeg_ls_lossless.dcm")).read_bytes())
    (tmp_path / "copy-without-extension").write_bytes(buf.getvalue())  # found by its DICM magic
    np.testing.assert_array_equal(decode_image(tmp_path / "copy-without-extension"), decoded("MR_small.dcm"))
