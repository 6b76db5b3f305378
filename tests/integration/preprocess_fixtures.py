"""Tiny real datasets on disk for the preprocess tests, and a way to compare two caches."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr_tools.data.caches.format import INDEX, MANIFEST, REJECTED, STORE_FILES
from cxr_tools.data.labels import NIH_CSV_HEADER, NIH_LABELS


def _phantom(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth, X-ray-like 8-bit image (compresses like a real one, unlike noise)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 60 + 80 * np.exp(-(((xx - w * rng.uniform(0.3, 0.7)) / (0.3 * w)) ** 2 + ((yy - h / 2) / (0.4 * h)) ** 2))
    img += rng.normal(0, 6, size=(h, w))
    cv2.circle(img, (int(w * rng.uniform(0.2, 0.8)), int(h * rng.uniform(0.2, 0.8))), max(2, w // 8), 220, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_nih(root: Path, patients: int = 12, per_patient: int = 3, size: int = 48, seed: int = 0) -> Path:
    """Write an NIH-layout dataset (v2020 CSV header, ``images/*.png``) of ``patients * per_patient`` images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [NIH_CSV_HEADER]
    for p in range(1, patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            cv2.imwrite(str(root / "images" / name), _phantom(rng, size, size))
            n_find = int(rng.integers(0, 3))
            findings = "|".join(rng.choice(NIH_LABELS, n_find, replace=False)) or "No Finding"
            view = "AP" if rng.random() < 0.3 else "PA"
            lines.append(f"{name},{findings},{k},{p},{30 + p},{'MF'[p % 2]},{view},{size},{size},0.143,0.143")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root


def _add_row(root: Path, name: str, patient: int) -> None:
    with open(root / "Data_Entry_2017_v2020.csv", "a") as fh:
        fh.write(f"{name},No Finding,0,{patient},50,M,PA,48,48,0.143,0.143\n")


def add_bad_inputs(root: Path, patient: int = 900) -> dict[str, set[str]]:
    """Add awkward files to an NIH-layout dataset, each listed in the CSV.

    Returns ``{"rejected": names that must land in rejected.csv, "kept": names that must be stored}``.
    """
    images = root / "images"
    rng = np.random.default_rng(99)
    good = cv2.imencode(".png", _phantom(rng, 48, 48))[1].tobytes()
    bad = {
        "zero.png": b"",
        "truncated.png": good[: len(good) // 2],
        "text.png": b"this is not an image, just some text\n" * 4,
        "html.png": b"<html><body>Access denied</body></html>\n",
        "garbage.png": bytes(rng.integers(0, 256, 500, dtype=np.uint8)),
    }
    for name, data in bad.items():
        (images / name).write_bytes(data)
    rgb = np.dstack([_phantom(rng, 48, 48), _phantom(rng, 48, 48), _phantom(rng, 48, 48)])
    cv2.imwrite(str(images / "rgb.png"), rgb)
    cv2.imwrite(str(images / "deep16.png"), (_phantom(rng, 48, 48).astype(np.uint16) * 257))
    cv2.imwrite(str(images / "odd.png"), _phantom(rng, 37, 53))
    cv2.imwrite(str(images / "photo.jpg"), _phantom(rng, 40, 64))
    kept = {"rgb.png", "deep16.png", "odd.png", "photo.jpg"}
    for i, name in enumerate([*bad, *sorted(kept), "missing.png"]):
        _add_row(root, name, patient + i)
    return {"rejected": {*bad, "missing.png"}, "kept": kept}


def cache_contents(path: Path) -> tuple[np.ndarray, pd.DataFrame, dict, pd.DataFrame]:
    """(images, index, manifest without its creation time, rejected) of a cache, read without the project's reader."""
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.pop("created")
    store = path / STORE_FILES[manifest["storage"]]
    if manifest["storage"] == "hdf5":
        import h5py

        with h5py.File(store, "r") as fh:
            images = fh["images"][:]
    else:
        images = np.load(store)
    index = pd.read_csv(path / INDEX, dtype=str, keep_default_na=False)
    rejected = pd.read_csv(path / REJECTED, dtype=str, keep_default_na=False)
    return images, index, manifest, rejected


def assert_same_cache(a: Path, b: Path, *, ignore: tuple[str, ...] = ()) -> None:
    """Images, index, rejected list and manifest (creation time and ``ignore`` keys aside) are identical."""
    ia, xa, ma, ra = cache_contents(a)
    ib, xb, mb, rb = cache_contents(b)
    assert ia.shape == ib.shape and ia.dtype == ib.dtype
    assert zlib.crc32(ia.tobytes()) == zlib.crc32(ib.tobytes())
    np.testing.assert_array_equal(ia, ib)
    pd.testing.assert_frame_equal(xa, xb)
    pd.testing.assert_frame_equal(ra, rb)
    for key in ignore:
        ma.pop(key, None)
        mb.pop(key, None)
    assert ma == mb
