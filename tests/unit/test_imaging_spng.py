"""PNGs decoded by libspng (pyspng) give OpenCV's pixels bit for bit, and OpenCV takes over wherever it must.

The reference is the decoder with pyspng made unimportable (``sys.modules["pyspng"] = None``): OpenCV's
``imdecode`` plus ``to_gray``, which is exactly what decoded PNGs before libspng (and still does without pyspng).
Every file is a real PNG written by OpenCV, Pillow or libspng itself.
"""

from __future__ import annotations

import io
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyspng
import pytest
from PIL import Image

from cxr_tools.data.decoding import imaging
from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, decode_image, decode_png_spng, load_image


def _phantom(h: int, w: int, top: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise over the whole range (exercises every PNG filter and the colour weights)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2) / 4
    return np.clip(smooth * top + rng.normal(0, top / 20, (h, w)), 0, top).astype(np.uint16 if top > 255 else np.uint8)


def _stack(n: int, top: int, h: int = 41, w: int = 67) -> np.ndarray:
    return np.dstack([_phantom(h, w, top, seed) for seed in range(n)])


def _cv2_png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def _pil_png(image: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kwargs)
    return buf.getvalue()


#: Each kind of PNG libspng decodes here, as written by the library named first.
PNGS: dict[str, Callable[[], bytes]] = {
    "cv2 gray 8": lambda: _cv2_png(_phantom(41, 67, 255, 0)),
    "cv2 gray 16": lambda: _cv2_png(_phantom(41, 67, 65535, 1)),
    "cv2 gray 16, 12-bit values": lambda: _cv2_png(_phantom(41, 67, 4095, 2)),
    "cv2 BGR 8": lambda: _cv2_png(_stack(3, 255)),
    "cv2 BGR 16": lambda: _cv2_png(_stack(3, 65535)),
    "cv2 BGRA 8": lambda: _cv2_png(_stack(4, 255)),
    "cv2 BGRA 16": lambda: _cv2_png(_stack(4, 65535)),
    "PIL L": lambda: _pil_png(Image.fromarray(_phantom(41, 67, 255, 3))),
    "PIL I;16": lambda: _pil_png(Image.fromarray(_phantom(41, 67, 65535, 4))),
    "PIL RGB": lambda: _pil_png(Image.fromarray(_stack(3, 255))),
    "PIL RGBA": lambda: _pil_png(Image.fromarray(_stack(4, 255))),
    "PIL LA": lambda: _pil_png(Image.fromarray(_stack(4, 255)).convert("LA")),
    "PIL palette": lambda: _pil_png(Image.fromarray(_stack(3, 255)).convert("P")),
    "PIL palette with transparency": lambda: _pil_png(Image.fromarray(_stack(3, 255)).convert("P"), transparency=0),
    "PIL optimised": lambda: _pil_png(Image.fromarray(_phantom(41, 67, 255, 5)), optimize=True),
    "spng interlaced gray 8": lambda: pyspng.encode(_phantom(41, 67, 255, 6), progressive=2),
    "spng interlaced RGBA 16": lambda: pyspng.encode(_stack(4, 65535), progressive=2),
    "spng gray+alpha 16": lambda: pyspng.encode(_stack(2, 65535)),
}


@pytest.fixture
def opencv_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], np.ndarray]:
    """Decode as if pyspng were not installed (the reference, and the fallback)."""

    def decode(path: Path) -> np.ndarray:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "pyspng", None)
            imaging._spng_codec.cache_clear()
            try:
                assert imaging._spng_codec() is None
                return decode_image(path)
            finally:
                imaging._spng_codec.cache_clear()

    return decode


@pytest.mark.parametrize("kind", sorted(PNGS))
def test_libspng_gives_opencvs_pixels_bit_for_bit(tmp_path, opencv_only, kind):
    data = PNGS[kind]()
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert decode_png_spng(data) is not None, "libspng must be the decoder for this kind of PNG"
    ours, reference = decode_image(path), opencv_only(path)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape == (41, 67)
    np.testing.assert_array_equal(ours, reference)
    ops = ImageOps(size=32)
    np.testing.assert_array_equal(load_image(path, ops), load_image_reference(reference, ops))


def load_image_reference(decoded: np.ndarray, ops: ImageOps) -> np.ndarray:
    return imaging.apply_ops(imaging.to_uint8(decoded), ops)


def _with_exif_orientation(img: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    return _pil_png(Image.fromarray(img), exif=exif.tobytes())


def _damage_ihdr_crc(data: bytes) -> bytes:
    return data[:29] + bytes([data[29] ^ 0xFF]) + data[30:]


def _damage_idat(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 8 + 20
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


def test_exif_orientation_is_left_to_opencv_which_applies_it(tmp_path, opencv_only):
    img = _phantom(20, 30, 255, 7)
    data = _with_exif_orientation(img)
    (tmp_path / "exif.png").write_bytes(data)
    assert decode_png_spng(data) is None
    out = decode_image(tmp_path / "exif.png")
    assert out.shape == (30, 20)
    np.testing.assert_array_equal(out, opencv_only(tmp_path / "exif.png"))


def test_low_bit_depth_png_is_left_to_opencv(tmp_path, opencv_only):
    data = _pil_png(Image.fromarray(_phantom(41, 67, 255, 8)).convert("1"))
    (tmp_path / "bw.png").write_bytes(data)
    assert data[24] == 1 and decode_png_spng(data) is None
    np.testing.assert_array_equal(decode_image(tmp_path / "bw.png"), opencv_only(tmp_path / "bw.png"))


@pytest.mark.parametrize("damage", [_damage_ihdr_crc, _damage_idat])
def test_damaged_png_gets_opencvs_verdict(tmp_path, opencv_only, damage):
    """A wrong header checksum or damaged image data: libspng steps aside and OpenCV decides, as before."""
    data = damage(_cv2_png(_phantom(41, 67, 255, 9)))
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
    data = _damage_ihdr_crc(_cv2_png(_phantom(41, 67, 255, 10)))
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
