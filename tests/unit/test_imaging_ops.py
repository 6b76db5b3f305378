"""ImageOps validation and apply_ops: crop modes, odd sizes, CLAHE, brightness."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_tools.data.decoding.imaging import ImageOps, apply_ops
from cxr_tools.errors import ConfigError, InputError


def test_defaults_and_manifest_roundtrip():
    ops = ImageOps()
    d = ops.to_dict()
    assert d == {"size": 256, "crop": "center", "clahe": True, "clahe_clip": 2.0, "clahe_tile": 8, "brightness": 0.0}
    assert ImageOps.from_dict(json.loads(json.dumps(d))) == ops


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"size": 7},
        {"size": 64.5},
        {"size": True},
        {"crop": "squash"},
        {"clahe_clip": 0},
        {"clahe_tile": 0},
        {"size": 16, "clahe_tile": 32},
        {"brightness": 300},
        {"clahe": "yes"},
    ],
)
def test_invalid_values_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        ImageOps(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="gamma"):
        ImageOps.from_dict({"size": 64, "gamma": 2})


def wide_image() -> np.ndarray:
    """60 x 120: left quarter 50, middle half 200, right quarter 100."""
    img = np.full((60, 120), 200, np.uint8)
    img[:, :30] = 50
    img[:, 90:] = 100
    return img


@pytest.mark.parametrize("size", [32, 33, 17, 256])
@pytest.mark.parametrize("crop", ["center", "letterbox", "none"])
def test_every_crop_mode_gives_the_requested_square(crop, size):
    out = apply_ops(wide_image(), ImageOps(size=size, crop=crop, clahe=False))
    assert out.shape == (size, size) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_center_crop_keeps_the_middle():
    out = apply_ops(wide_image(), ImageOps(size=30, crop="center", clahe=False))
    # the central 60x60 square is columns 30..89: all 200
    assert (out == 200).all()


def test_letterbox_pads_with_black_and_keeps_the_whole_image():
    out = apply_ops(wide_image(), ImageOps(size=40, crop="letterbox", clahe=False))
    assert (out[:10] == 0).all() and (out[30:] == 0).all()  # 120x60 -> 40x20, centred vertically
    band = out[10:30]
    assert band[:, 2].min() == 50 and band[:, 20].min() == 200 and band[:, 37].min() == 100


def test_letterbox_odd_padding_on_a_tall_odd_image():
    img = np.full((51, 17), 180, np.uint8)
    out = apply_ops(img, ImageOps(size=25, crop="letterbox", clahe=False))
    cols = np.flatnonzero(out[12] > 0)
    assert out.shape == (25, 25) and 7 <= len(cols) <= 9
    assert abs(cols[0] - (24 - cols[-1])) <= 1  # centred


def test_none_resizes_the_whole_image_changing_aspect():
    out = apply_ops(wide_image(), ImageOps(size=40, crop="none", clahe=False))
    assert out[20, 2] == 50 and out[20, 20] == 200 and out[20, 37] == 100 and out.min() > 0


def test_upscaling_small_images_works():
    img = np.arange(9 * 11, dtype=np.uint8).reshape(9, 11)
    for crop in ("center", "letterbox", "none"):
        assert apply_ops(img, ImageOps(size=64, crop=crop, clahe=False)).shape == (64, 64)


def test_clahe_on_off():
    rng = np.random.default_rng(0)
    low_contrast = (100 + rng.integers(0, 12, (64, 64))).astype(np.uint8)
    off = apply_ops(low_contrast, ImageOps(size=64, clahe=False))
    on = apply_ops(low_contrast, ImageOps(size=64, clahe=True, clahe_clip=4.0))
    np.testing.assert_array_equal(off, low_contrast)
    assert on.std() > 2 * off.std()
    stronger = apply_ops(low_contrast, ImageOps(size=64, clahe=True, clahe_clip=40.0))
    assert stronger.std() > on.std()


def test_brightness_is_added_last_and_clipped():
    img = np.array([[0, 100, 250]] * 3, np.uint8)
    up = apply_ops(img, ImageOps(size=8, crop="none", clahe=False, brightness=10))
    base = apply_ops(img, ImageOps(size=8, crop="none", clahe=False))
    np.testing.assert_array_equal(up, np.clip(base.astype(int) + 10, 0, 255))
    down = apply_ops(img, ImageOps(size=8, crop="none", clahe=False, brightness=-120))
    np.testing.assert_array_equal(down, np.clip(base.astype(int) - 120, 0, 255))


def test_input_is_never_modified_and_output_never_aliases_it():
    img = np.full((32, 32), 100, np.uint8)
    before = img.copy()
    for ops in (ImageOps(size=32, clahe=False), ImageOps(size=32, clahe=False, brightness=50), ImageOps(size=32)):
        out = apply_ops(img, ops)
        assert not np.shares_memory(out, img)
    np.testing.assert_array_equal(img, before)


def test_rejects_non_uint8_or_non_2d():
    with pytest.raises(InputError, match="to_uint8"):
        apply_ops(np.zeros((8, 8), np.uint16), ImageOps(size=8))
    with pytest.raises(InputError):
        apply_ops(np.zeros((8, 8, 3), np.uint8), ImageOps(size=8))
