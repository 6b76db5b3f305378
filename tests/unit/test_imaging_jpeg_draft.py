"""``ImageOps.jpeg_draft``: JPEGs decoded at reduced scale by libjpeg, close to the full decode; others untouched."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_tools.data.decoding.imaging import ImageDecodeError, ImageOps, _jpeg_draft_factor, decode_image, load_image


def _phantom(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth chest-like gray image with some structure (ribs, a bright blob), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 120 + 60 * np.sin(x / w * np.pi) * np.cos((y / h - 0.5) * np.pi)
    img += 25 * np.sin(y / 23.0) * (x > w * 0.2) * (x < w * 0.8)
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    img += 50 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (h / 15) ** 2))
    img = cv2.GaussianBlur(img, (0, 0), 2) + rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


@pytest.mark.parametrize(("side", "size", "factor"), [(2048, 256, 8), (2048, 512, 4), (1024, 384, 2), (700, 512, 1)])
def test_the_factor_keeps_the_smaller_side_at_least_the_output_size(tmp_path, side, size, factor):
    path = _jpeg(tmp_path / "a.jpg", _phantom(side + 100, side))
    buf = np.fromfile(path, dtype=np.uint8)
    assert _jpeg_draft_factor(buf, size) == factor
    assert min(decode_image(path, size).shape) == side // factor


@pytest.mark.parametrize("crop", ["center", "letterbox", "none"])
def test_draft_decoding_stays_within_a_few_gray_levels_of_the_full_decode(tmp_path, crop):
    path = _jpeg(tmp_path / "cxr.jpg", _phantom(2300, 2000))
    full = load_image(path, ImageOps(size=224, crop=crop, clahe=False))
    fast = load_image(path, ImageOps(size=224, crop=crop, clahe=False, jpeg_draft=True))
    assert fast.shape == full.shape == (224, 224) and fast.dtype == np.uint8
    diff = np.abs(fast.astype(int) - full.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6, (diff.mean(), diff.max())


def test_colour_jpeg_becomes_the_same_gray(tmp_path):
    gray = _phantom(1600, 1600, seed=1)
    rgb = cv2.merge([gray, gray, gray])
    path = _jpeg(tmp_path / "rgb.jpg", rgb)
    full = load_image(path, ImageOps(size=128, clahe=False))
    fast = load_image(path, ImageOps(size=128, clahe=False, jpeg_draft=True))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 1.5


def test_png_and_small_jpegs_are_decoded_exactly_as_without_it(tmp_path):
    img = _phantom(900, 800)
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), img)
    small = _jpeg(tmp_path / "small.jpg", img)  # 800 // 2 < 512: no reduction possible
    for path in (png, small):
        assert np.array_equal(
            load_image(path, ImageOps(size=512, jpeg_draft=True)), load_image(path, ImageOps(size=512))
        )


def test_a_truncated_jpeg_is_still_reported(tmp_path):
    path = _jpeg(tmp_path / "t.jpg", _phantom(1600, 1600))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError):
        load_image(path, ImageOps(size=128, jpeg_draft=True))


def test_recorded_in_the_manifest_only_when_on():
    assert "jpeg_draft" not in ImageOps().to_dict()
    on = ImageOps(size=128, jpeg_draft=True)
    assert on.to_dict()["jpeg_draft"] is True
    assert ImageOps.from_dict(json.loads(json.dumps(on.to_dict()))) == on
