"""Decode any supported chest X-ray file and turn it into the cached 8-bit square image.

The pipeline, in order (each step a field of :class:`ImageOps`, recorded in the cache manifest):

1. :func:`decode_image` -- PNG through Wuffs (``pywuffs``) or libspng (``pyspng``) where they give OpenCV's
   pixels and OpenCV otherwise (:func:`decode_png`), JPEG / BMP / TIFF through OpenCV, DICOM through pydicom
   (:mod:`cxr_tools.data.decoding.dicom_pixels`, every common transfer syntax). The result is a 2-D grayscale array
   (uint8 or uint16) in which *higher means brighter*, oriented as a viewer shows it: colour, palette and
   alpha images become gray (alpha dropped), a JPEG's EXIF orientation is applied (as ``cv2.imread`` and
   PIL's ``exif_transpose`` do), DICOM MONOCHROME1 is inverted and the modality LUT and VOI LUT or window
   are applied.
2. :func:`to_uint8` -- 16-bit or float to 8-bit by min-max over the image (a DICOM window is already 8-bit).
3. :func:`apply_ops` -- crop (``center`` square, ``letterbox`` pad with 0, or ``none`` = plain resize), resize
   with area interpolation when shrinking, CLAHE, additive brightness offset.

:func:`load_image` chains the three. It is the preprocessing hot path (one 1024² PNG decode is ~6 ms, CLAHE at
256² ~0.2 ms), so it reads each file once, avoids copies, resizes before padding, and creates one CLAHE object
per process and parameter set.

Failures raise :class:`ImageDecodeError` whose :attr:`~ImageDecodeError.reason` is short enough for
``rejected.csv``. The module imports only numpy at import time (cv2 and pydicom inside the functions) so CLI
modules may use :class:`ImageOps` without slowing ``cxr --help``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CROP_MODES: tuple[str, ...] = ("center", "letterbox", "none")
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_EXTENSIONS)


class ImageDecodeError(InputError):
    """An image file cannot be decoded; :attr:`reason` is the short text written to ``rejected.csv``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read image {self.path}: {reason}.", "Replace or remove the file.")

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in worker processes: pickle by (path, reason), not by the formatted message.
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageOps:
    """The preprocessing applied to every image; stored in the cache manifest via :meth:`to_dict`.

    Attributes:
        size: output side in pixels (square).
        crop: ``center`` (central square, loses the sides of wide images), ``letterbox`` (whole image, padded
            to a square with black), ``none`` (plain resize; the aspect ratio changes).
        clahe: contrast-limited adaptive histogram equalisation after resizing.
        clahe_clip: CLAHE clip limit (OpenCV ``clipLimit``).
        clahe_tile: CLAHE tile grid (``tile x tile`` tiles).
        brightness: additive offset in 8-bit units, applied last and clipped to [0, 255].
        jpeg_draft: decode JPEGs at 1/2, 1/4 or 1/8 scale inside libjpeg (its DCT scaling) when the smaller
            side stays at least ``size``: several times faster on CheXpert-sized files, pixels within a few
            gray levels of the full decode (so off by default; recorded in the manifest only when on).
    """

    size: int = 256
    crop: str = "center"
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    brightness: float = 0.0
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or not 8 <= self.size <= 8192:
            raise ConfigError(f"Image size must be an integer between 8 and 8192, got {self.size!r}.")
        if self.crop not in CROP_MODES:
            raise ConfigError(f"Unknown crop mode {self.crop!r}.", f"Use one of: {', '.join(CROP_MODES)}.")
        if not isinstance(self.clahe, (bool, np.bool_)):
            raise ConfigError(f"clahe must be true or false, got {self.clahe!r}.")
        if not isinstance(self.clahe_clip, (int, float)) or not 0 < float(self.clahe_clip) <= 1000:
            raise ConfigError(f"CLAHE clip limit must be a number in (0, 1000], got {self.clahe_clip!r}.")
        if (
            isinstance(self.clahe_tile, bool)
            or not isinstance(self.clahe_tile, (int, np.integer))
            or not 1 <= self.clahe_tile <= min(64, self.size)
        ):
            raise ConfigError(
                f"CLAHE tile grid must be an integer between 1 and {min(64, self.size)}, got {self.clahe_tile!r}."
            )
        if not isinstance(self.brightness, (int, float)) or not -255 <= float(self.brightness) <= 255:
            raise ConfigError(f"Brightness offset must be a number in [-255, 255], got {self.brightness!r}.")
        if not isinstance(self.jpeg_draft, (bool, np.bool_)):
            raise ConfigError(f"jpeg_draft must be true or false, got {self.jpeg_draft!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values for the manifest."""
        return {
            "size": int(self.size),
            "crop": self.crop,
            "clahe": bool(self.clahe),
            "clahe_clip": float(self.clahe_clip),
            "clahe_tile": int(self.clahe_tile),
            "brightness": float(self.brightness),
            # only when on: caches made without it keep the manifests (and hashes) they always had
            **({"jpeg_draft": True} if self.jpeg_draft else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageOps:
        """Rebuild from :meth:`to_dict` output (e.g. a cache manifest), so prediction preprocesses alike."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown image operation(s): {', '.join(unknown)}.", f"Known: {', '.join(sorted(known))}."
            )
        return cls(**data)


# --------------------------------------------------------------------------------------------------- decoding


_local = threading.local()


def _read_bytes(path: Path) -> np.ndarray:
    """The file's bytes as a read-only uint8 view of one ``bytes`` object (its ``.base``, which pywuffs, pyspng and
    pydicom take without a copy). One ``read`` into a new object: measured ~0.2 ms less per 500 KB PNG than
    ``readinto`` a reused buffer followed by a copy (in a worker, whose malloc keeps freed blocks,
    :func:`~cxr_tools.data.decoding.pipeline.keep_freed_memory`, the new object reuses the last one's memory)."""
    try:
        with open(path, "rb", buffering=0) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(path, "is a directory, not a file") from None
    except PermissionError:
        raise ImageDecodeError(path, "permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    return np.frombuffer(data, dtype=np.uint8)


def _file_bytes(buf: np.ndarray) -> bytes:
    """The ``bytes`` behind a :func:`_read_bytes` view (no copy), or a copy of any other array."""
    base = buf.base
    return base if isinstance(base, bytes) and len(base) == buf.size else buf.tobytes()


def _is_dicom(path: Path, buf: np.ndarray) -> bool:
    return path.suffix.lower() in DICOM_EXTENSIONS or (buf.size >= 132 and buf[128:132].tobytes() == b"DICM")


def _truncation(buf: np.ndarray) -> str | None:
    """A reason when a PNG or JPEG lacks its end marker (OpenCV would silently return a gray-filled image).

    The marker is looked for in the second half / last 64 KiB, which tolerates trailers some writers append
    after it and ignores the end marker of an embedded EXIF thumbnail near the start.
    """
    head = buf[:8].tobytes()
    is_png = head.startswith(b"\x89PNG\r\n\x1a\n")
    is_jpeg = head.startswith(b"\xff\xd8\xff")
    if not (is_png or is_jpeg):
        return None
    marker = b"IEND" if is_png else b"\xff\xd9"
    if marker in buf[-64:].tobytes():  # the usual case: the marker ends the file
        return None
    tail = buf[max(buf.size // 2, buf.size - 65536) :].tobytes()
    if is_png and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    if is_jpeg and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    return None


def _not_an_image_reason(buf: np.ndarray) -> str:
    head = buf[:256].tobytes().lstrip()
    if head[:1] == b"<":
        return "an HTML/XML file, not an image (a failed download?)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file, not an image"
    return "not a decodable image (unknown or corrupt format)"


def to_gray(arr: np.ndarray, path: Path, *, bgr: bool = True) -> np.ndarray:
    import cv2

    if arr.ndim == 2:
        return arr
    if arr.ndim != 3:
        raise ImageDecodeError(path, f"unsupported array shape {arr.shape}")
    channels = arr.shape[2]
    if channels == 1:
        return arr[:, :, 0]
    if channels == 2:  # gray + alpha
        return arr[:, :, 0]
    if channels in (3, 4):
        if arr.dtype not in (np.uint8, np.uint16, np.float32):
            arr = arr.astype(np.float32)
        if channels == 3:
            code = cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY
        else:
            code = cv2.COLOR_BGRA2GRAY if bgr else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(arr, code)
    raise ImageDecodeError(path, f"{channels} channels (expected gray, RGB or RGBA)")


def _decode_raster(path: Path, buf: np.ndarray) -> np.ndarray:
    import cv2

    reason = _truncation(buf)
    if reason:
        raise ImageDecodeError(path, reason)
    if buf[:8].tobytes() == _PNG_SIGNATURE:
        arr, _ = decode_png(_file_bytes(buf))
        if arr is not None:
            return arr
    try:
        # any depth (16-bit stays 16-bit), any colour, alpha dropped, EXIF orientation applied (as cv2.imread)
        arr = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as exc:
        raise ImageDecodeError(path, f"decoder error ({str(exc).strip().splitlines()[-1][:120]})") from None
    if arr is None:
        raise ImageDecodeError(path, _not_an_image_reason(buf))
    arr = to_gray(arr, path)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(path, f"unsupported image shape {arr.shape}")
    if arr.dtype == np.int8:
        arr = arr.astype(np.int16)
    return arr


# --- PNG through Wuffs, then libspng ----------------------------------------------------------------------------
#
# Wuffs (``pywuffs``, the optional ``fast-png`` extra) and libspng (``pyspng``) decode PNGs faster than OpenCV's
# libpng (docs/benchmarks.md, Preprocess: Wuffs ~1.3-1.5x, libspng ~1.1-1.2x on 1024² gray X-rays). Each is used only
# where its result is OpenCV's, bit for bit (tests/unit/test_imaging_wuffs.py, test_imaging_spng.py), and only on
# files OpenCV would accept: no eXIf chunk (OpenCV turns the image by its orientation), width and height within
# OpenCV's limits, every chunk's CRC correct (pyspng and pywuffs ignore CRCs by default; libpng refuses a file with a
# wrong critical-chunk CRC), the zlib stream's Adler-32 checked (libspng does; Wuffs is told to). Wuffs takes fewer
# kinds of PNG (the tests' verdict): no tRNS (its gray output differs), no 16-bit gray+alpha, only the chunks listed
# in _WUFFS_CHUNKS (an animated PNG's frames, unknown chunks: libspng or OpenCV). A file one decoder refuses goes to
# the next, and OpenCV decodes it or says what is wrong, as before.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BE32 = struct.Struct(">I")
#: OpenCV's default limits (CV_IO_MAX_IMAGE_WIDTH / _PIXELS): larger images are errors there, so not decoded here.
_CV_MAX_SIDE, _CV_MAX_PIXELS = 1 << 20, 1 << 30
#: 8/16-bit gray, RGB, gray+alpha, RGBA and 8-bit palette; 1/2/4-bit images stay with OpenCV.
_SPNG_KINDS = frozenset({(8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (16, 4), (8, 6), (16, 6)})
#: (bit depth, colour type) -> the Wuffs pixel format it is decoded to (then made gray as OpenCV's BGR(A) is).
_WUFFS_KINDS: dict[tuple[int, int], str] = {
    (8, 0): "Y",
    (16, 0): "Y_16LE",
    (8, 2): "BGR",
    (8, 3): "BGR",
    (8, 4): "BGRA_NONPREMUL",
    (8, 6): "BGRA_NONPREMUL",
    (16, 2): "BGRA_NONPREMUL_4X16LE",
    (16, 6): "BGRA_NONPREMUL_4X16LE",
}
#: chunks that change neither decoder's pixels (colour-management and text chunks are never applied; tested each)
_WUFFS_CHUNKS = frozenset(b"IHDR PLTE IDAT IEND tEXt zTXt iTXt tIME pHYs gAMA cHRM sRGB iCCP sBIT bKGD".split())


def _png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) of a PNG within OpenCV's size limits, else None."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height = _BE32.unpack_from(data, 16)[0], _BE32.unpack_from(data, 20)[0]
    if not (0 < width <= _CV_MAX_SIDE and 0 < height <= _CV_MAX_SIDE and width * height <= _CV_MAX_PIXELS):
        return None
    return width, height, data[24], data[25], data[28]


def _png_chunk_kinds(data: bytes, *, idat_crc: bool) -> frozenset[bytes] | None:
    """The chunk types of a PNG whose chunk list is whole up to IEND and whose CRCs are right, else None.

    ``idat_crc=False`` leaves the IDAT CRCs to the decoder (Wuffs checks them itself; ~0.15 ms per 500 KB here).
    """
    view = memoryview(data)
    pos, end = 8, len(data)
    kinds: set[bytes] = set()
    while pos + 12 <= end:
        (length,) = _BE32.unpack_from(data, pos)
        kind = data[pos + 4 : pos + 8]
        stop = pos + 12 + length
        if stop > end:
            return None
        if idat_crc or kind != b"IDAT":
            (crc,) = _BE32.unpack_from(data, stop - 4)
            if zlib.crc32(view[pos + 4 : stop - 4]) != crc:
                return None
        kinds.add(kind)
        if kind == b"IEND":
            return frozenset(kinds)
        pos = stop
    return None


def decode_png(data: bytes) -> tuple[np.ndarray | None, str]:
    """Decode a PNG with the fastest decoder that gives OpenCV's pixels for it: ``(pixels, "wuffs")``,
    ``(pixels, "libspng")``, or ``(None, "opencv")`` when neither is installed, applies or accepts the file (the
    caller then decodes with OpenCV, which also reports a bad file). Pixels as :func:`decode_image` returns them."""
    arr = decode_png_wuffs(data)
    if arr is not None:
        return arr, "wuffs"
    arr = decode_png_spng(data)
    if arr is not None:
        return arr, "libspng"
    return None, "opencv"


def _optional_module(name: str) -> Any:
    """The module, or None when it (an optional decoder) is not installed."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.cache
def _wuffs_module() -> Any:
    """``pywuffs``, or None when it is not installed (the ``fast-png`` extra) or lacks what we call."""
    pywuffs = _optional_module("pywuffs")
    aux, formats = getattr(pywuffs, "aux", None), getattr(pywuffs, "PixelFormat", None)  # aux: pybind11 submodule
    needed = [(aux, "ImageDecoder"), (aux, "ImageDecoderConfig"), (pywuffs, "ImageDecoderType")]
    needed += [(pywuffs, "ImageDecoderQuirks"), *((formats, name) for name in _WUFFS_KINDS.values())]
    return pywuffs if all(hasattr(obj, name) for obj, name in needed) else None


def _wuffs_decoder(pixel_format: str) -> Any:
    """One Wuffs decoder per thread and output format (pywuffs' decoders are reusable but not thread-safe, and
    release the GIL while decoding), PNG only, checksums verified."""
    cache: dict[str, Any] | None = getattr(_local, "wuffs", None)
    if cache is None:
        cache = _local.wuffs = {}
    dec = cache.get(pixel_format)
    if dec is None:
        wuffs = _wuffs_module()
        cfg = wuffs.aux.ImageDecoderConfig()
        cfg.enabled_decoders = [wuffs.ImageDecoderType.PNG]
        cfg.pixel_format = getattr(wuffs.PixelFormat, pixel_format)
        # pywuffs turns PNG checksums off by default; libpng refuses a bad IDAT CRC or Adler-32, so must we
        cfg.quirks = {wuffs.ImageDecoderQuirks.IGNORE_CHECKSUM: 0}
        dec = cache[pixel_format] = wuffs.aux.ImageDecoder(cfg)
    return dec


def decode_png_wuffs(data: bytes) -> np.ndarray | None:
    """Decode a PNG with Wuffs into what ``_decode_raster`` gets from OpenCV: 2-D gray, uint8 or uint16.

    None when pywuffs is missing, the PNG is not of a kind Wuffs is used for, or Wuffs does not decode all of it.
    Colour goes through the same ``cv2.cvtColor`` weights as OpenCV's BGR(A) decode, alpha ignored.
    """
    if _wuffs_module() is None:
        return None
    header = _png_header(data)
    if header is None:
        return None
    width, height, depth, colour, _ = header
    pixel_format = _WUFFS_KINDS.get((depth, colour))
    if pixel_format is None:
        return None
    kinds = _png_chunk_kinds(data, idat_crc=False)
    if kinds is None or not kinds <= _WUFFS_CHUNKS:
        return None
    result = _wuffs_decoder(pixel_format).decode(data)
    if result.error_message:  # a refusal or a partial decode: libspng or OpenCV decides
        return None
    pix = result.pixbuf  # a new (H, W, bytes per pixel) uint8 array on every access
    if pix.shape[:2] != (height, width):
        return None
    if pixel_format == "Y":
        return pix.reshape(height, width)
    if pixel_format == "Y_16LE":
        return pix.view(np.dtype("<u2")).reshape(height, width).astype(np.uint16, copy=False)
    import cv2

    if pixel_format == "BGR":
        return cv2.cvtColor(pix, cv2.COLOR_BGR2GRAY)
    if pixel_format == "BGRA_NONPREMUL_4X16LE":
        pix = pix.view(np.dtype("<u2")).astype(np.uint16, copy=False)
    return cv2.cvtColor(pix, cv2.COLOR_BGRA2GRAY)


@functools.cache
def _spng_codec() -> Any:
    """pyspng's extension module (``pyspng.c``), or None when pyspng is not installed or lacks what we call."""
    codec = getattr(_optional_module("pyspng"), "c", None)
    needed = ("spng_decode_image_bytes", "SPNG_FMT_AUTO", "SPNG_FMT_GA16")
    return codec if codec is not None and all(hasattr(codec, n) for n in needed) else None


def decode_png_spng(data: bytes) -> np.ndarray | None:
    """Decode a PNG with libspng into what ``_decode_raster`` gets from OpenCV: 2-D gray, uint8 or uint16.

    None when pyspng is missing, the kind of PNG is not one libspng is used for, or libspng fails: the caller then
    decodes with OpenCV. Colour goes through the same ``cv2.cvtColor`` weights as OpenCV's BGR decode (alpha
    dropped); gray+alpha keeps the gray channel (OpenCV's gray-to-BGR then BGR-to-gray is the identity).
    """
    codec = _spng_codec()
    header = _png_header(data) if codec is not None else None
    if header is None:
        return None
    width, height, depth, colour, _ = header
    if (depth, colour) not in _SPNG_KINDS:
        return None
    kinds = _png_chunk_kinds(data, idat_crc=True)
    if kinds is None or b"eXIf" in kinds:
        return None
    # libspng's automatic format gives 16-bit gray a wrong layout; as gray+alpha it is right
    fmt = codec.SPNG_FMT_GA16 if (depth, colour) == (16, 0) else codec.SPNG_FMT_AUTO
    try:
        arr = codec.spng_decode_image_bytes(data, fmt)
    except Exception:  # libspng refuses the file: OpenCV decodes it or says why not
        return None
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = np.ascontiguousarray(arr[:, :, 0])
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        import cv2

        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY if arr.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if arr.shape != (height, width) or arr.dtype != (np.uint16 if depth == 16 else np.uint8):
        return None
    return arr


def minmax(arr: np.ndarray, dtype: type[np.unsignedinteger[Any]]) -> np.ndarray:
    """Linear min-max stretch to the full range of an unsigned integer dtype; a flat image becomes 0."""
    top = float(np.iinfo(dtype).max)
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        if not finite.any():
            return np.zeros(arr.shape, dtype=dtype)
        arr = np.where(finite, arr, np.nanmin(np.where(finite, arr, np.nan)))
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=dtype)
    out = (arr - lo) * (top / (hi - lo))
    return np.rint(out, out=out).astype(dtype)


def decode_image(path: str | os.PathLike[str], draft_min_side: int | None = None) -> np.ndarray:
    """Decode one image file into a 2-D grayscale array, higher values brighter.

    PNG / JPEG / BMP / TIFF go through ``cv2.imdecode`` (colour, palette and alpha images become gray; 16-bit
    stays 16-bit; EXIF orientation applied); most PNGs through Wuffs or libspng instead, with the same pixels
    (:func:`decode_png`). DICOM (``.dcm`` / ``.dicom`` or the ``DICM`` magic at byte 128)
    goes through :func:`~cxr_tools.data.decoding.dicom_pixels.decode_dicom`: modality LUT, then the VOI LUT or window
    if present (result uint8 over the window), MONOCHROME1 inverted; a multi-frame file is refused.

    ``draft_min_side``: decode a JPEG at the smallest 1/2, 1/4 or 1/8 scale whose smaller side is still at
    least this many pixels (libjpeg's DCT scaling; :attr:`ImageOps.jpeg_draft`); other formats are unaffected.

    Returns:
        uint8 or uint16 [H, W] for ordinary files (other dtypes only for exotic TIFFs; :func:`to_uint8`
        handles them).

    Raises:
        ImageDecodeError: empty, truncated, not an image, unreadable or multi-frame DICOM, unsupported channels.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if _is_dicom(path, buf):
        from cxr_tools.data.decoding.dicom_pixels import decode_dicom

        return decode_dicom(path, _file_bytes(buf))
    if draft_min_side:
        factor = _jpeg_draft_factor(buf, draft_min_side)
        if factor > 1:
            return _decode_jpeg_draft(path, buf, factor)
    return _decode_raster(path, buf)


_DRAFT_FLAGS = {2: "IMREAD_REDUCED_GRAYSCALE_2", 4: "IMREAD_REDUCED_GRAYSCALE_4", 8: "IMREAD_REDUCED_GRAYSCALE_8"}


def _jpeg_draft_factor(buf: np.ndarray, min_side: int) -> int:
    """The largest of 8, 4, 2 that keeps the smaller side of this JPEG >= ``min_side``; 1 for anything else."""
    if len(buf) < 4 or bytes(buf[:3]) != b"\xff\xd8\xff":
        return 1
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_file_bytes(buf))) as im:  # reads the header only
            if im.format != "JPEG" or im.mode not in ("L", "RGB", "YCbCr", "CMYK"):
                return 1
            side = min(im.size)
    except (UnidentifiedImageError, OSError, ValueError):
        return 1  # the full decoder reports what is wrong with the file
    return next((f for f in (8, 4, 2) if side // f >= min_side), 1)


def _decode_jpeg_draft(path: Path, buf: np.ndarray, factor: int) -> np.ndarray:
    import cv2

    reason = _truncation(buf)
    if reason:
        raise ImageDecodeError(path, reason)
    try:
        # EXIF orientation applied, as the full decode does
        arr = cv2.imdecode(buf, getattr(cv2, _DRAFT_FLAGS[factor]))
    except cv2.error as exc:
        raise ImageDecodeError(path, f"decoder error ({str(exc).strip().splitlines()[-1][:120]})") from None
    if arr is None or arr.ndim != 2 or arr.size == 0:
        return _decode_raster(path, buf)  # let the full decoder say what is wrong
    return arr


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit version of a decoded image: uint8 passes through uncopied, anything else is min-max stretched."""
    if arr.dtype == np.uint8:
        return arr
    import cv2

    fast = (np.uint16, np.int16, np.int32, np.float32, np.float64)
    if arr.dtype in fast and (arr.dtype.kind != "f" or np.isfinite(arr).all()):
        lo, hi, _, _ = cv2.minMaxLoc(arr)
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        scale = 255.0 / (hi - lo)
        return cv2.convertScaleAbs(arr, alpha=scale, beta=-lo * scale)
    return minmax(arr, np.uint8)


# ------------------------------------------------------------------------------------------------- operations


def _clahe(clip: float, tile: int) -> Any:
    """One CLAHE object per thread and parameter set (creating one per image costs more than applying it)."""
    cache: dict[tuple[float, int], Any] | None = getattr(_local, "clahe", None)
    if cache is None:
        cache = _local.clahe = {}
    key = (float(clip), int(tile))
    obj = cache.get(key)
    if obj is None:
        import cv2

        obj = cache[key] = cv2.createCLAHE(clipLimit=key[0], tileGridSize=(key[1], key[1]))
    return obj


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    h, w = img.shape
    if (w, h) == (width, height):
        return img
    interp = cv2.INTER_AREA if width <= w and height <= h else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def apply_ops(img: np.ndarray, ops: ImageOps) -> np.ndarray:
    """Crop/pad, resize, CLAHE and brightness on an 8-bit 2-D image; returns a new C-contiguous uint8 [size, size].

    The input is never modified.
    """
    import cv2

    if img.dtype != np.uint8 or img.ndim != 2:
        raise InputError(f"apply_ops needs a 2-D uint8 image, got {img.dtype} {img.shape}.", "Call to_uint8 first.")
    size = int(ops.size)
    h, w = img.shape
    if ops.crop == "center":
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        out = _resize(img[y0 : y0 + side, x0 : x0 + side], size, size)
    elif ops.crop == "letterbox":
        scale = size / max(h, w)
        nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
        out = _resize(img, nw, nh)
        if (nw, nh) != (size, size):
            top, left = (size - nh) // 2, (size - nw) // 2
            out = cv2.copyMakeBorder(out, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=0)
    else:
        out = _resize(img, size, size)
    owned = out is not img and not np.may_share_memory(out, img)
    if ops.clahe:
        out = _clahe(ops.clahe_clip, ops.clahe_tile).apply(np.ascontiguousarray(out))
        owned = True
    if ops.brightness:
        # saturating add: negative offsets clip at 0, positive at 255
        out = cv2.add(out, float(ops.brightness), dst=out if owned else None)  # type: ignore[call-overload]
        owned = True
    if not owned:
        out = out.copy()
    return np.ascontiguousarray(out)


def load_image(path: str | os.PathLike[str], ops: ImageOps) -> np.ndarray:
    """Decode, convert to 8-bit and preprocess one file: uint8 [ops.size, ops.size]. Raises ImageDecodeError."""
    return apply_ops(to_uint8(decode_image(path, ops.size if ops.jpeg_draft else None)), ops)
