"""DICOM pixel data to the 2-D grayscale array :func:`~cxr_tools.data.decoding.imaging.decode_image` returns.

Every transfer syntax an X-ray archive writes decodes through pydicom's pixel plugins, which cxr-tools declares
as dependencies: uncompressed (implicit / explicit little endian, big endian, deflated) and RLE natively,
JPEG baseline / extended / lossless (process 14) with ``pylibjpeg-libjpeg``, JPEG 2000 with
``pylibjpeg-openjpeg``, JPEG-LS lossless and near-lossless with ``pyjpegls`` (pydicom 3's JPEG-LS plugin; GDCM
is not needed). A 12-bit JPEG whose scan header carries the wrong spectral range, as some old writers made
them (NEMA's WG04 ``NM1_JPLY``, pydicom's ``JPEG-lossy.dcm``), is decoded after the header is set to what a
sequential JPEG must hold, which is what the IJG library does with such files (it warns and goes on).

What the pixels become:

* grayscale: modality LUT (rescale slope / intercept), then the VOI LUT or window when the file has one
  (uint8 over the window), MONOCHROME1 inverted, so that higher is brighter as a viewer shows it;
* colour (RGB, YBR as pydicom converts it to RGB, PALETTE COLOR through its lookup table): to gray with
  the same weights as a colour PNG or JPEG;
* multi-frame (``NumberOfFrames`` > 1): **reported, not decoded**. Which frame of a cine, tomosynthesis or
  dual-energy object is "the radiograph" is not known from the file, and a silently chosen frame would be
  scored as if it were one; the reason names the frame count and says to export the frame wanted;
* no pixel data (a structured report, a presentation state): reported.

Failures raise :class:`~cxr_tools.data.decoding.imaging.ImageDecodeError` with a reason that names the transfer syntax
and the decoder's own words; never "install a plugin" unless a declared dependency is really missing.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.decoding.imaging import ImageDecodeError, minmax, to_gray

log = logging.getLogger(__name__)

#: The plugins cxr-tools declares for compressed transfer syntaxes (named in the reason when one is missing).
PLUGIN_PACKAGES = ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls")

#: JPEG baseline (process 1) and extended (processes 2 and 4): the syntaxes :func:`repair_sequential_scans` serves
_SEQUENTIAL_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_READ_ERRORS = (EOFError, ValueError, KeyError, OSError, AttributeError, TypeError, IndexError)


def decode_dicom(path: Path, data: bytes) -> np.ndarray:
    """The image of one DICOM file (its bytes ``data``) as uint8 / uint16 / float [H, W]; see the module doc."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # corrupt bytes make pydicom raise many types (found by tests/unit/test_decode_fuzz.py)
        raise ImageDecodeError(path, f"unreadable DICOM ({type(exc).__name__})") from None
    try:
        return _decode(path, ds, data)
    except ImageDecodeError:
        raise
    except Exception as exc:  # a malformed element met while decoding (values are parsed lazily)
        raise ImageDecodeError(path, f"malformed DICOM ({type(exc).__name__}: {_first_line(exc)})") from None


def _decode(path: Path, ds: Any, data: bytes) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        magic = len(data) >= 132 and data[128:132] == b"DICM"
        raise ImageDecodeError(path, "DICOM without pixel data" if magic else "not a DICOM file (no DICM header)")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (ValueError, TypeError):
        raise ImageDecodeError(path, f"invalid Number of Frames {ds.get('NumberOfFrames')!r}") from None
    if frames > 1:
        raise ImageDecodeError(
            path,
            f"multi-frame DICOM ({frames} frames): which frame is the radiograph is not known; "
            "export the frame wanted as a single-frame file",
        )
    arr = _pixels(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except _READ_ERRORS as exc:
            raise ImageDecodeError(path, f"PALETTE COLOR lookup table unusable ({_first_line(exc)})") from None
    if arr.ndim == 3:
        # pydicom returns RGB (YBR converted): the colour PNG / JPEG weights, in RGB order
        return to_gray(np.ascontiguousarray(arr), path, bgr=False)
    if arr.ndim != 2:
        raise ImageDecodeError(path, f"unsupported DICOM pixel array shape {arr.shape}")
    return _grayscale(path, ds, arr, photometric)


def _pixels(path: Path, ds: Any) -> np.ndarray:
    """``ds.pixel_array``, with one repair for sequential JPEGs whose scan header is malformed."""
    tsyntax = _transfer_syntax(ds)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for broken or undecodable pixel data
        first = exc
    if str(tsyntax) in _SEQUENTIAL_JPEG_SYNTAXES:
        repaired = _repaired_jpeg(ds)
        if repaired is not None:
            ds.PixelData = repaired
            try:
                arr = np.asarray(ds.pixel_array)
            except Exception:  # the repair did not help: report the original error
                pass
            else:
                log.info("%s: decoded after setting the JPEG scan header to the sequential range", path)
                return arr
    raise ImageDecodeError(path, _pixel_reason(first, tsyntax)) from None


def _transfer_syntax(ds: Any) -> Any:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _pixel_reason(exc: BaseException, tsyntax: Any) -> str:
    """A rejected.csv reason naming the transfer syntax and what the decoder said."""
    name = getattr(tsyntax, "name", None) or (str(tsyntax) if tsyntax else "no transfer syntax in the file meta")
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "missing dependencies" in text:
        return (
            f"no decoder installed for {name} pixel data ({'; '.join(lines[1:3])[:160]}); cxr-tools depends on "
            f"{', '.join(PLUGIN_PACKAGES)}: reinstall it"
        )
    if isinstance(exc, NotImplementedError) and "no pixel data decoders" in text:
        return f"transfer syntax {name} is not supported by pydicom's decoders"
    # "Unable to decode as exceptions were raised by all available plugins:" then one line per plugin
    detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else type(exc).__name__)
    return f"DICOM pixel data cannot be decoded ({name}: {detail[:160]})"


def _repaired_jpeg(ds: Any) -> bytes | None:
    """The encapsulated pixel data with each frame's sequential scan headers repaired, or None if unchanged."""
    from pydicom.encaps import encapsulate, generate_frames

    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    except _READ_ERRORS:
        return None
    fixed = [repair_sequential_scans(f) for f in frames]
    if all(f is None for f in fixed):
        return None
    return encapsulate([f if f is not None else o for f, o in zip(fixed, frames, strict=True)])


_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline and extended sequential DCT, Huffman coded
_OTHER_SOF = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def repair_sequential_scans(data: bytes) -> bytes | None:
    """``data`` (a JPEG stream) with the start-of-scan headers of a sequential DCT image set to Ss=0, Se=63,
    Ah=Al=0, the only values ITU T.81 allows there; None when the stream is not such a JPEG or needs nothing.

    Some writers put other values there; the IJG library ignores them with a warning, libjpeg (pylibjpeg)
    refuses the file. Progressive and lossless JPEGs, whose scans use these fields, are never touched.
    """
    if data[:2] != b"\xff\xd8":
        return None
    buf = bytearray(data)
    n, i = len(buf), 2
    sequential = changed = False
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None  # not at a marker: a corrupt stream, left to the decoder's own error
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        end = i + 2 + length
        if length < 2 or end > n:
            return None
        if marker in _SEQUENTIAL_SOF:
            sequential = True
        elif marker in _OTHER_SOF:
            return None
        if marker == 0xDA:
            if not sequential:
                return None
            spectral = i + 5 + 2 * buf[i + 4]  # after Ls, Ns and Ns component selectors
            if spectral + 3 > end:
                return None
            if tuple(buf[spectral : spectral + 3]) != (0, 63, 0):
                buf[spectral : spectral + 3] = b"\x00\x3f\x00"
                changed = True
            i = _next_marker(buf, end)
            continue
        i = end
    return bytes(buf) if changed else None


def _next_marker(buf: bytearray, start: int) -> int:
    """Position of the first marker after entropy-coded data (``FF 00`` stuffing and restart markers skipped)."""
    j = start
    while True:
        j = buf.find(b"\xff", j)
        if j < 0 or j + 1 >= len(buf):
            return len(buf)
        nxt = buf[j + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            j += 2
            continue
        if nxt == 0xFF:
            j += 1
            continue
        return j


def _grayscale(path: Path, ds: Any, arr: np.ndarray, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(arr, ds)
        window = _voi_range(ds)
        if window is not None:
            windowed = apply_voi_lut(values, ds, index=0)
            lo, hi = window
            out = _scale_range(windowed, lo, hi)
            return 255 - out if photometric == "MONOCHROME1" else out
    except (ValueError, AttributeError, TypeError, IndexError, KeyError, NotImplementedError) as exc:
        log.warning("%s: cannot apply the DICOM VOI LUT/window (%s); using min-max", path, exc)
        values = apply_modality_lut(arr, ds)
    if values.dtype in (np.uint8, np.uint16):
        if photometric == "MONOCHROME1":
            lo, hi = values.min(), values.max()
            values = (hi - values) + lo  # stays within [lo, hi]: no overflow
        return values
    out16 = minmax(values, np.uint16)
    return np.iinfo(np.uint16).max - out16 if photometric == "MONOCHROME1" else out16


def _voi_range(ds: Any) -> tuple[float, float] | None:
    """Output range of the VOI transform pydicom applies (DICOM PS3.3 C.11.2), or None when there is none."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        data = seq[0].LUTData
        values = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.float64)
        return float(values.min()), float(values.max())
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0) or 0) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)


def _scale_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return minmax(arr, np.uint8)
    out = (np.asarray(arr, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)
