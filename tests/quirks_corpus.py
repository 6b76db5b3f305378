"""A corpus of the odd files real folders hold, written into a test's tmp_path (never into the repository).

:func:`make_quirks` writes them under ``root/<class>/`` (a class-per-folder layout, so ``cxr preprocess`` reads
it as a ``folder`` source and ``cxr predict`` as an image folder) and returns what each must become: decoded
(``KEPT``, with the 2-D shape :func:`~cxr_tools.data.decoding.imaging.decode_image` gives) or refused with a reason
containing a given text (``REFUSED``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CLASS = "quirks"


@dataclass(frozen=True)
class Quirks:
    """The corpus: ``kept`` maps a file to its decoded shape, ``refused`` a file to a text of its reason."""

    root: Path
    kept: dict[Path, tuple[int, int]]
    refused: dict[Path, str]
    unreadable: Path | None  # chmod 000 (absent when running as root, where permissions do not stop reads)


def gradient(h: int, w: int) -> np.ndarray:
    """A uint8 image whose every pixel differs from its neighbours (orientation and crops are visible)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 7 + yy * 3) % 200 + 30).astype(np.uint8)


def _pil(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def make_quirks(root: Path) -> Quirks:
    """Write the corpus; see the module docstring."""
    d = root / CLASS
    d.mkdir(parents=True)
    g = gradient(40, 56)
    rgb = np.dstack([g, 255 - g, g // 2])
    png = cv2.imencode(".png", g)[1].tobytes()
    jpeg = cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    files = {
        "png16.png": cv2.imencode(".png", g.astype(np.uint16) * 250)[1].tobytes(),
        "tiff16.tif": _pil(Image.fromarray(g.astype(np.uint16) * 250), "TIFF"),
        "rgba.png": _pil(Image.fromarray(np.dstack([rgb, np.full_like(g, 90)]), "RGBA"), "PNG"),
        "palette.png": _pil(Image.fromarray(rgb).convert("P"), "PNG"),
        "gray-alpha.png": _pil(Image.fromarray(g).convert("LA"), "PNG"),
        "exif-rotated.jpg": _pil(Image.fromarray(g), "JPEG", exif=exif, quality=95),
        "progressive.jpg": _pil(Image.fromarray(g), "JPEG", progressive=True, quality=95),
        "cmyk.jpg": _pil(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
        "very-large.png": cv2.imencode(".png", gradient(24, 8200))[1].tobytes(),
        "tiny.png": cv2.imencode(".png", gradient(5, 7))[1].tobytes(),
        "png-named.jpg": png,
        "ünïcödé 名前 ñ.png": png,
        "   spaces   in name .png": png,
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero-bytes.png": b"",
        "text-named.png": b"patient list, not an image\n" * 3,
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "a-link-to-tiny.png").symlink_to(d / "tiny.png")
    (d / "loop.png").symlink_to(d / "loop.png")  # a symlink to itself: ELOOP on open
    (d / "dangling.png").symlink_to(d / "no-such-file.png")
    (d / "folder-named.png").mkdir()  # a directory named like an image holds an image: nothing is lost
    (d / "folder-named.png" / "inside.png").write_bytes(png)
    (d / "sub").mkdir()
    (d / "sub" / "back-up").symlink_to(d, target_is_directory=True)  # a directory loop: walked once
    unreadable = None
    if os.geteuid() != 0:
        unreadable = d / "unreadable.png"
        unreadable.write_bytes(png)
        unreadable.chmod(0)
    kept = {
        d / "png16.png": (40, 56),
        d / "tiff16.tif": (40, 56),
        d / "rgba.png": (40, 56),
        d / "palette.png": (40, 56),
        d / "gray-alpha.png": (40, 56),
        d / "exif-rotated.jpg": (56, 40),  # displayed upright: the EXIF orientation is applied
        d / "progressive.jpg": (40, 56),
        d / "cmyk.jpg": (40, 56),
        d / "very-large.png": (24, 8200),
        d / "tiny.png": (5, 7),
        d / "a-link-to-tiny.png": (5, 7),
        d / "png-named.jpg": (40, 56),
        d / "ünïcödé 名前 ñ.png": (40, 56),
        d / "   spaces   in name .png": (40, 56),
        d / "folder-named.png" / "inside.png": (40, 56),
    }
    refused = {
        d / "truncated.png": "truncated PNG",
        d / "truncated.jpg": "truncated JPEG",
        d / "zero-bytes.png": "empty file",
        d / "text-named.png": "text file",
        d / "loop.png": "symbolic links",
        d / "dangling.png": "file not found",
    }
    if unreadable is not None:
        refused[unreadable] = "permission denied"
    return Quirks(root, kept, refused, unreadable)
