"""PNGs decoded by libspng (pyspng) give OpenCV's pixels bit for bit, and OpenCV takes over wherever it must.

The reference is the decoder with pywuffs and pyspng made unimportable (``sys.modules[...] = None``): OpenCV's
``imdecode`` plus ``to_gray``, which is exactly what decoded PNGs before libspng (and still does without them).
Every file is a real PNG written by OpenCV, Pillow or libspng itself. Wuffs, first in the chain, has its own tests
(test_imaging_wuffs.py); these call libspng directly.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import png_files
import pyspng
import pytest
from PIL import Image
from png_files import cv2_png, decoders_missing, phantom, pil_png, stack

from cxr_tools.data.decoding import imaging
from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, decode_image, decode_png_spng, load_image

#: Each kind of PNG libspng decodes here, as written by the library named first.
PNGS: dict[str, Callable[[], bytes]] = {
    "cv2 gray 8": lambda: cv2_png(phantom(41, 67, 255, 0)),
    "cv2 gray 16": lambda: cv2_png(phantom(41, 67, 65535, 1)),
    "cv2 gray 16, 12-bit values": lambda: cv2_png(phantom(41, 67, 4095, 2)),
    "cv2 BGR 8": lambda: cv2_png(stack(3, 255)),
    "cv2 BGR 16": lambda: cv2_png(stack(3, 65535)),
    "cv2 BGRA 8": lambda: cv2_png(stack(4, 255)),
    "cv2 BGRA 16": lambda: cv2_png(stack(4, 65535)),
    "PIL L": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 3))),
    "PIL I;16": lambda: pil_png(Image.fromarray(phantom(41, 67, 65535, 4))),
    "PIL RGB": lambda: pil_png(Image.fromarray(stack(3, 255))),
    "PIL RGBA": lambda: pil_png(Image.fromarray(stack(4, 255))),
    "PIL LA": lambda: pil_png(Image.fromarray(stack(4, 255)).convert("LA")),
    "PIL palette": lambda: pil_png(Image.fromarray(stack(3, 255)).convert("P")),
    "PIL palette with transparency": lambda: pil_png(Image.fromarray(stack(3, 255)).convert("P"), transparency=0),
    "PIL optimised": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 5)), optimize=True),
    "spng interlaced gray 8": lambda: pyspng.encode(phantom(41, 67, 255, 6), progressive=2),
    "spng interlaced RGBA 16": lambda: pyspng.encode(stack(4, 65535), progressive=2),
    "spng gray+alpha 16": lambda: pyspng.encode(stack(2, 65535)),
}


@pytest.fixture
def opencv_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], np.ndarray]:
    """Decode as if neither pywuffs nor pyspng were installed (the reference, and the fallback)."""
    return functools.partial(png_files.opencv_only, monkeypatch)


@pytest.mark.parametrize("kind", sorted(PNGS))
def test_libspng_gives_opencvs_pixels_bit_for_bit(tmp_path, monkeypatch, opencv_only, kind):
    data = PNGS[kind]()
    path = tmp_path / "x.png"
    path.write_bytes(data)
    ops = ImageOps(size=32)
    with decoders_missing(monkeypatch, "pywuffs"):  # libspng first in the chain
        assert imaging.decode_png(data)[1] == "libspng", "libspng must be the decoder for this kind of PNG"
        ours, loaded = decode_image(path), load_image(path, ops)
    reference = opencv_only(path)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape == (41, 67)
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_array_equal(loaded, load_image_reference(reference, ops))


def load_image_reference(decoded: np.ndarray, ops: ImageOps) -> np.ndarray:
    return imaging.apply_ops(imaging.to_uint8(decoded), ops)


def _with_exif_orientation(img: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    return pil_png(Image.fromarray(img), exif=exif.tobytes())


def _damage_ihdr_crc(data: bytes) -> bytes:
    return data[:29] + bytes([data[29] ^ 0xFF]) + data[30:]


def _damage_idat(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 8 + 20
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


def test_exif_orientation_is_left_to_opencv_which_applies_it(tmp_path, opencv_only):
    img = phantom(20, 30, 255, 7)
    data = _with_exif_orientation(img)
    (tmp_path / "exif.png").write_bytes(data)
    assert decode_png_spng(data) is None
    out = decode_image(tmp_path / "exif.png")
    assert out.shape == (30, 20)
    np.testing.assert_array_equal(out, opencv_only(tmp_path / "exif.png"))


def test_low_bit_depth_png_is_left_to_opencv(tmp_path, opencv_only):
    data = pil_png(Image.fromarray(phantom(41, 67, 255, 8)).convert("1"))
    (tmp_path / "bw.png").write_bytes(data)
    assert data[24] == 1 and decode_png_spng(data) is None
    np.testing.assert_array_equal(decode_image(tmp_path / "bw.png"), opencv_only(tmp_path / "bw.png"))


@pytest.mark.parametrize("damage", [_damage_ihdr_crc, _damage_idat])
def test_damaged_png_gets_opencvs_verdict(tmp_path, opencv_only, damage):
    """A wrong header checksum or damaged image data: libspng steps aside and OpenCV decides, as before."""
    data = damage(cv2_png(phantom(41, 67, 255, 9)))
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    assert decode_png_spng(data) is None
    try:
        reference = opencv_only(path)
    except ImageDecodeError as exc:
        with pytest.raises(ImageDecodeError) as ours:
            decode_image(path)
        assert ours.value.reason == exc.reason
    else:
        np.testing.assert_array_equal(decode_image(path), reference)


def test_header_checksum_damage_is_refused(tmp_path):
    data = _damage_ihdr_crc(cv2_png(phantom(41, 67, 255, 10)))
    assert zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big")
    (tmp_path / "bad.png").write_bytes(data)
    with pytest.raises(ImageDecodeError):
        decode_image(tmp_path / "bad.png")


def test_without_pyspng_opencv_decodes_every_png(tmp_path, opencv_only):
    for i, kind in enumerate(("cv2 gray 8", "cv2 gray 16", "PIL RGBA")):
        path = tmp_path / f"{i}.png"
        data = PNGS[kind]()
        path.write_bytes(data)
        expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        if expected.ndim == 3:
            expected = cv2.cvtColor(expected, cv2.COLOR_BGR2GRAY)
        np.testing.assert_array_equal(opencv_only(path), expected)
