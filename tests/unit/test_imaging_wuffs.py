"""PNGs decoded by Wuffs (pywuffs, the ``fast-png`` extra) give OpenCV's pixels bit for bit; every PNG Wuffs is
not proven on goes to libspng or OpenCV, and damaged files get OpenCV's verdict, as before.

The reference is ``decode_image`` with pywuffs and pyspng made unimportable (OpenCV's ``imdecode`` plus
``to_gray``). Every file is a real PNG written by OpenCV (each filter, zlib strategy and compression level it
offers), Pillow or libspng; a few get a chunk added or their image data re-deflated by zlib (``png_files``).
"""

from __future__ import annotations

import functools
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import png_files
import pyspng
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image, ImageCms, PngImagePlugin
from png_files import chunk, chunks, cv2_png, decoders_missing, phantom, pil_png, rezlib, stack, with_chunk

from cxr_tools.data.decoding import imaging
from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, decode_image, decode_png, load_image

pytest.importorskip("pywuffs", reason="the fast-png extra (pywuffs) is not installed")

GRAY8 = phantom(41, 67, 255, 0)
GRAY16 = phantom(41, 67, 65535, 1)
FILTERS = ("NONE", "SUB", "UP", "AVG", "PAETH", "FAST_FILTERS", "ALL_FILTERS")
STRATEGIES = ("DEFAULT", "FILTERED", "HUFFMAN_ONLY", "RLE", "FIXED")


def _cv2(arr: np.ndarray, *, filt: str | None = None, strategy: str | None = None, level: int | None = None) -> bytes:
    params = []
    if filt is not None:
        params += [
            cv2.IMWRITE_PNG_FILTER,
            getattr(cv2, f"IMWRITE_PNG_{filt}" if "_" in filt else f"IMWRITE_PNG_FILTER_{filt}"),
        ]
    if strategy is not None:
        params += [cv2.IMWRITE_PNG_STRATEGY, getattr(cv2, f"IMWRITE_PNG_STRATEGY_{strategy}")]
    if level is not None:
        params += [cv2.IMWRITE_PNG_COMPRESSION, level]
    return cv2_png(arr, *params)


def _pnginfo() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "cxr-tools test")
    info.add_text("Comment", "z" * 300, zip=True)  # zTXt
    info.add_itxt("Description", "thorax, PA", lang="en")
    return info


#: Each kind of PNG Wuffs decodes, as written by the library named first.
WUFFS_PNGS: dict[str, Callable[[], bytes]] = {
    **{f"cv2 gray 8, filter {f}": functools.partial(_cv2, GRAY8, filt=f) for f in FILTERS},
    **{f"cv2 gray 16, filter {f}": functools.partial(_cv2, GRAY16, filt=f) for f in FILTERS},
    **{f"cv2 gray 8, zlib {s}": functools.partial(_cv2, GRAY8, strategy=s) for s in STRATEGIES},
    **{f"cv2 gray 16, zlib {s}": functools.partial(_cv2, GRAY16, strategy=s) for s in STRATEGIES},
    **{f"cv2 gray 8, level {n}": functools.partial(_cv2, GRAY8, level=n) for n in (0, 1, 9)},
    **{f"cv2 gray 16, level {n}": functools.partial(_cv2, GRAY16, level=n) for n in (0, 9)},
    "cv2 gray 16, 12-bit values": lambda: _cv2(phantom(41, 67, 4095, 2)),
    "cv2 gray 8, 1 x 1": lambda: _cv2(np.array([[200]], np.uint8)),
    "cv2 gray 8, one row": lambda: _cv2(phantom(1, 257, 255, 3)),
    "cv2 gray 16, one row": lambda: _cv2(phantom(1, 33, 65535, 4)),
    "cv2 gray 8, one column": lambda: _cv2(phantom(129, 1, 255, 5)),
    "cv2 gray 8, odd width, Paeth": lambda: _cv2(phantom(7, 1023, 255, 6), filt="PAETH"),
    "cv2 gray 16, odd width, Avg": lambda: _cv2(phantom(9, 333, 65535, 7), filt="AVG"),
    "cv2 gray 8, flat": lambda: _cv2(np.full((16, 16), 77, np.uint8)),
    "cv2 BGR 8": lambda: _cv2(stack(3, 255)),
    "cv2 BGR 16": lambda: _cv2(stack(3, 65535)),
    "cv2 BGRA 8": lambda: _cv2(stack(4, 255)),
    "cv2 BGRA 16, odd width": lambda: _cv2(stack(4, 65535, h=5, w=31)),
    "PIL L": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 8))),
    "PIL L, optimised": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 9)), optimize=True),
    "PIL L, level 0": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 10)), compress_level=0),
    "PIL I;16": lambda: pil_png(Image.fromarray(phantom(41, 67, 65535, 11))),
    "PIL RGB": lambda: pil_png(Image.fromarray(stack(3, 255))),
    "PIL RGBA": lambda: pil_png(Image.fromarray(stack(4, 255))),
    "PIL LA": lambda: pil_png(Image.fromarray(stack(4, 255)).convert("LA")),
    "PIL palette": lambda: pil_png(Image.fromarray(stack(3, 255)).convert("P")),
    "PIL L, text chunks": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 12)), pnginfo=_pnginfo()),
    "PIL L, dpi (pHYs)": lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 13)), dpi=(150, 150)),
    "PIL RGB, ICC profile (iCCP)": lambda: pil_png(
        Image.fromarray(stack(3, 255)), icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ),
    "cv2 gray 8 + gAMA": lambda: with_chunk(_cv2(GRAY8), b"gAMA", struct.pack(">I", 100000)),
    "cv2 gray 16 + sRGB, cHRM": lambda: with_chunk(
        with_chunk(_cv2(GRAY16), b"sRGB", b"\x00"), b"cHRM", struct.pack(">8I", *([31270, 32900] * 4))
    ),
    "cv2 gray 8 + sBIT 5": lambda: with_chunk(_cv2(GRAY8), b"sBIT", b"\x05"),
    "cv2 gray 16 + sBIT 12": lambda: with_chunk(_cv2(GRAY16), b"sBIT", b"\x0c"),
    "cv2 gray 8 + bKGD": lambda: with_chunk(_cv2(GRAY8), b"bKGD", b"\x00\xff"),
    "cv2 gray 8 + tIME": lambda: with_chunk(_cv2(GRAY8), b"tIME", struct.pack(">HBBBBB", 2026, 12, 6, 12, 0, 0)),
    "spng gray 8, re-deflated": lambda: rezlib(pyspng.encode(phantom(41, 67, 255, 14))),
    "spng gray+alpha 8, re-deflated": lambda: rezlib(pyspng.encode(stack(2, 255))),
    "spng interlaced gray 8": lambda: rezlib(pyspng.encode(phantom(41, 67, 255, 15), progressive=2)),
    "spng interlaced gray 8, 1 x 1": lambda: rezlib(pyspng.encode(np.array([[9]], np.uint8), progressive=2)),
    "spng interlaced gray 8, 3 x 1": lambda: rezlib(pyspng.encode(phantom(3, 1, 255, 16), progressive=2)),
    "spng interlaced gray 8, 1 x 9": lambda: rezlib(pyspng.encode(phantom(1, 9, 255, 17), progressive=2)),
    "spng interlaced RGB 8, 7 x 5": lambda: rezlib(pyspng.encode(stack(3, 255, h=7, w=5), progressive=2)),
    "spng interlaced RGBA 16": lambda: rezlib(pyspng.encode(stack(4, 65535), progressive=2)),
}


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.png"
    path.write_bytes(data)
    return path


@pytest.fixture
def opencv_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], np.ndarray]:
    return functools.partial(png_files.opencv_only, monkeypatch)


@pytest.mark.parametrize("kind", sorted(WUFFS_PNGS))
def test_wuffs_gives_opencvs_pixels_bit_for_bit(tmp_path, opencv_only, kind):
    data = WUFFS_PNGS[kind]()
    path = _write(tmp_path, data)
    assert decode_png(data)[1] == "wuffs", "Wuffs must be the decoder for this kind of PNG"
    ours, reference = decode_image(path), opencv_only(path)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    assert ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, reference)
    ops = ImageOps(size=16)
    np.testing.assert_array_equal(load_image(path, ops), imaging.apply_ops(imaging.to_uint8(reference), ops))


def _apng(data: bytes) -> bytes:
    """A one-frame animated PNG: acTL, and an fcTL before the IDAT (the default image is the first frame)."""
    width, height = struct.unpack_from(">II", data, 16)
    fctl = struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 10, 0, 0)
    return with_chunk(with_chunk(data, b"fcTL", fctl), b"acTL", struct.pack(">II", 1, 0))


#: PNGs Wuffs is not used for, and the decoder that takes them instead.
OTHER_PNGS: dict[str, tuple[Callable[[], bytes], str]] = {
    # Wuffs' gray output differs from OpenCV's where tRNS marks a transparent gray
    "PIL L with tRNS": (lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 20)), transparency=100), "libspng"),
    "PIL I;16 with tRNS": (lambda: pil_png(Image.fromarray(phantom(41, 67, 65535, 21)), transparency=999), "libspng"),
    "PIL palette with tRNS": (
        lambda: pil_png(Image.fromarray(stack(3, 255)).convert("P"), transparency=0),
        "libspng",
    ),
    "gray+alpha 16": (lambda: rezlib(pyspng.encode(stack(2, 65535))), "libspng"),
    "unknown private chunk": (lambda: with_chunk(_cv2(GRAY8), b"prIv", b"\x01\x02"), "libspng"),
    "animated PNG": (lambda: _apng(_cv2(GRAY8)), "libspng"),
    # Wuffs refuses the empty distance tree libspng's encoder writes for some blocks (zlib takes it)
    "spng gray 8 (Wuffs refuses its deflate stream)": (lambda: pyspng.encode(phantom(41, 67, 255, 23)), "libspng"),
    "1-bit": (lambda: pil_png(Image.fromarray(phantom(41, 67, 255, 24)).convert("1")), "opencv"),
    "EXIF orientation": (
        lambda: pil_png(Image.fromarray(phantom(20, 30, 255, 25)), exif=_exif_rotated()),
        "opencv",
    ),
}


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    return exif.tobytes()


@pytest.mark.parametrize("kind", sorted(OTHER_PNGS))
def test_pngs_wuffs_is_not_proven_on_take_the_old_path(tmp_path, opencv_only, kind):
    make, decoder = OTHER_PNGS[kind]
    data = make()
    path = _write(tmp_path, data)
    assert imaging.decode_png_wuffs(data) is None
    assert decode_png(data)[1] == decoder
    np.testing.assert_array_equal(decode_image(path), opencv_only(path))


def test_without_pywuffs_libspng_decodes_and_pixels_are_the_same(tmp_path, monkeypatch, opencv_only):
    data = _cv2(GRAY16)
    path = _write(tmp_path, data)
    assert decode_png(data)[1] == "wuffs"
    with decoders_missing(monkeypatch, "pywuffs"):
        assert imaging._wuffs_module() is None
        assert decode_png(data)[1] == "libspng"
        without = decode_image(path)
    np.testing.assert_array_equal(without, opencv_only(path))
    np.testing.assert_array_equal(without, decode_image(path))


# --- damaged files: OpenCV's verdict, as before -----------------------------------------------------------------


def _idat(data: bytes) -> tuple[int, int]:
    return next((pos, n) for kind, pos, n in chunks(data) if kind == b"IDAT")


def _bad_idat_crc(data: bytes) -> bytes:
    """The image data intact, its chunk's CRC wrong (libpng refuses: a critical chunk)."""
    pos, n = _idat(data)
    at = pos + 8 + n
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _bad_adler(data: bytes) -> bytes:
    """One stored (level 0) pixel byte changed and the chunk's CRC made right: only zlib's Adler-32 tells."""
    pos, n = _idat(data)
    at = pos + 8 + n // 2
    body = data[pos + 4 : at] + bytes([data[at] ^ 0x55]) + data[at + 1 : pos + 8 + n]
    return data[:pos] + chunk(body[:4], body[4:]) + data[pos + 12 + n :]


def _bad_data(data: bytes) -> bytes:
    pos, _ = _idat(data)
    at = pos + 8 + 20
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]


def _bad_ancillary_crc(data: bytes) -> bytes:
    data = with_chunk(data, b"gAMA", struct.pack(">I", 45455))
    return data[: 33 + 12 + 3] + bytes([data[33 + 12 + 3] ^ 1]) + data[33 + 12 + 4 :]


def _idat_missing(data: bytes) -> bytes:
    """The last of several IDAT chunks left out: a whole chunk list over an unfinished zlib stream."""
    idat = [(pos, n) for kind, pos, n in chunks(data) if kind == b"IDAT"]
    assert len(idat) > 1
    pos, n = idat[-1]
    return data[:pos] + data[pos + 12 + n :]


def _cut_with_iend(data: bytes) -> bytes:
    """Cut inside the image data, an IEND glued on (passes the truncation check)."""
    pos, n = _idat(data)
    return data[: pos + 8 + n // 2] + chunk(b"IEND", b"")


DAMAGE = {
    "IDAT CRC": (_bad_idat_crc, lambda: _cv2(GRAY8)),
    "Adler-32": (_bad_adler, lambda: _cv2(GRAY8, level=0)),
    "Adler-32, 16-bit": (_bad_adler, lambda: _cv2(GRAY16, level=0)),
    "image data": (_bad_data, lambda: _cv2(GRAY8)),
    "ancillary CRC": (_bad_ancillary_crc, lambda: _cv2(GRAY8)),
    "missing IDAT": (_idat_missing, lambda: _cv2(phantom(512, 300, 255, 30), level=0)),
    "cut, IEND glued on": (_cut_with_iend, lambda: _cv2(GRAY16)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_png_gets_opencvs_verdict(tmp_path, opencv_only, damage):
    spoil, make = DAMAGE[damage]
    data = spoil(make())
    path = _write(tmp_path, data)
    assert imaging.decode_png_wuffs(data) is None
    try:
        reference = opencv_only(path)
    except ImageDecodeError as exc:
        assert decode_png(data) == (None, "opencv")  # libspng steps aside too
        with pytest.raises(ImageDecodeError) as ours:
            decode_image(path)
        assert ours.value.reason == exc.reason
    else:  # OpenCV shrugs it off (a bad ancillary CRC): the same pixels
        np.testing.assert_array_equal(decode_image(path), reference)


def test_a_wrong_idat_crc_is_refused_as_opencv_refuses_it(tmp_path):
    data = _bad_idat_crc(_cv2(GRAY8))
    pos, n = _idat(data)
    assert zlib.crc32(data[pos + 4 : pos + 8 + n]) != int.from_bytes(data[pos + 8 + n : pos + 12 + n], "big")
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_image(_write(tmp_path, data))


set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cxr-tools-hypothesis")


@functools.cache
def _fuzz_seeds() -> tuple[bytes, ...]:
    """Small files of the kinds Wuffs decodes, several IDAT chunks each (a cut or a bad byte can fall anywhere)."""
    return (
        _cv2(phantom(48, 40, 255, 40), level=1),
        _cv2(phantom(40, 33, 65535, 41), filt="PAETH"),
        with_chunk(_cv2(stack(3, 255, h=24, w=20)), b"gAMA", struct.pack(">I", 45455)),
    )


@settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 2),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(9, 1 << 16)),
)
def test_damaged_files_get_the_same_pixels_or_the_same_reason_as_opencv_alone(seed, edits, cut):
    """Bytes overwritten anywhere, or the file cut and an IEND glued on: OpenCV's verdict, Wuffs or not."""
    data = bytearray(_fuzz_seeds()[seed])
    for at, value in edits:
        data[at % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)] + chunk(b"IEND", b"")
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        path = _write(Path(tmp), bytes(data))
        try:
            reference: np.ndarray | str = png_files.opencv_only(mp, path)
        except ImageDecodeError as exc:
            reference = exc.reason
        try:
            ours: np.ndarray | str = decode_image(path)
        except ImageDecodeError as exc:
            ours = exc.reason
    if isinstance(reference, str):
        assert ours == reference
    else:
        assert isinstance(ours, np.ndarray) and ours.dtype == reference.dtype
        np.testing.assert_array_equal(ours, reference)


# --- one decoder per thread, many images --------------------------------------------------------------------


def test_one_decoder_per_thread_decodes_many_images_of_every_size(tmp_path):
    images = [phantom(h, w, 255, i) for i, (h, w) in enumerate([(64, 48), (1, 5), (300, 301), (64, 48)])]
    files = [_cv2(img) for img in images]
    first = imaging._wuffs_decoder("Y")
    for _ in range(2):
        for img, data in zip(images, files, strict=True):
            np.testing.assert_array_equal(imaging.decode_png_wuffs(data), img)
    assert imaging._wuffs_decoder("Y") is first

    out: dict[int, object] = {}

    def work(i: int) -> None:
        out[i] = imaging._wuffs_decoder("Y")
        for _ in range(20):
            for img, data in zip(images, files, strict=True):
                assert np.array_equal(imaging.decode_png_wuffs(data), img)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 3 and len({id(d) for d in out.values()} | {id(first)}) == 4
