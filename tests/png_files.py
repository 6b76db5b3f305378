"""Real PNG files for the PNG-decoder tests (tests/unit/test_imaging_wuffs.py, test_imaging_spng.py), and the
reference they are held to: OpenCV's ``imdecode`` plus ``to_gray`` (:func:`opencv_only`), which is exactly what
decodes PNGs when neither pywuffs nor pyspng is installed."""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxr_tools.data.decoding import imaging
from cxr_tools.data.decoding.imaging import decode_image


def phantom(h: int, w: int, top: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise over the whole range (exercises every PNG filter and the colour weights)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2) / 4
    return np.clip(smooth * top + rng.normal(0, top / 20, (h, w)), 0, top).astype(np.uint16 if top > 255 else np.uint8)


def stack(n: int, top: int, h: int = 41, w: int = 67) -> np.ndarray:
    return np.dstack([phantom(h, w, top, seed) for seed in range(n)])


def cv2_png(arr: np.ndarray, *params: int) -> bytes:
    return cv2.imencode(".png", arr, list(params))[1].tobytes()


def pil_png(image: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, data length) of every chunk."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], pos, length))
        pos += 12 + length
    return out


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One chunk with its correct CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """``data`` with a chunk inserted right after IHDR (where ancillary chunks before PLTE/IDAT may go)."""
    return data[:33] + chunk(kind, payload) + data[33:]


def rezlib(data: bytes) -> bytes:
    """The same PNG with its image data re-deflated by zlib (CRCs and Adler-32 new): turns another encoder's stream
    into one every inflater takes, keeping its header, filters and interlacing."""
    parts = chunks(data)
    idat = [p for p in parts if p[0] == b"IDAT"]
    raw = zlib.decompress(b"".join(data[pos + 8 : pos + 8 + n] for _, pos, n in idat))
    first, last = idat[0][1], idat[-1][1] + 12 + idat[-1][2]
    return data[:first] + chunk(b"IDAT", zlib.compress(raw, 6)) + data[last:]


@contextlib.contextmanager
def decoders_missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> Iterator[None]:
    """Make pywuffs and/or pyspng unimportable while inside (how a missing extra looks to imaging.py)."""
    with monkeypatch.context() as m:
        for name in modules:
            m.setitem(sys.modules, name, None)
        imaging._wuffs_module.cache_clear()
        imaging._spng_codec.cache_clear()
        try:
            yield
        finally:
            imaging._wuffs_module.cache_clear()
            imaging._spng_codec.cache_clear()


def opencv_only(monkeypatch: pytest.MonkeyPatch, path: Path) -> np.ndarray:
    """``decode_image`` as if neither pywuffs nor pyspng were installed: the reference, and the last fallback."""
    with decoders_missing(monkeypatch, "pywuffs", "pyspng"):
        assert imaging._wuffs_module() is None and imaging._spng_codec() is None
        return decode_image(path)
