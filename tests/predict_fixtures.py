"""Tiny model folders and mixed image folders for the predict / similarity tests (real files, real models)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from dicom_fixtures import dx_dataset, set_pixels

from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.models import create_model, save_model_dir

SIZE = 32


def make_model_dir(
    path: Path,
    labels: Sequence[str] = ("Effusion", "Mass"),
    *,
    training: str = "supervised",
    size: int = SIZE,
    seed: int = 0,
    preprocessing: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    num_classes: int | None = None,
    arch: str = "conv4-tiny",
) -> Path:
    """A model folder of a randomly initialised (seeded) ``conv4-tiny``; ``preprocessing={}`` records none."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=num_classes if num_classes is not None else len(labels))
    meta = {
        "labels": list(labels) if num_classes is None else [],
        "training": training,
        "image_size": size,
        "preprocessing": ImageOps(size=size).to_dict() if preprocessing is None else preprocessing,
        "extra": extra or {},
    }
    save_model_dir(model, meta, path)
    return path


def phantom(rng: np.random.Generator, h: int = 48, w: int = 40) -> np.ndarray:
    """A smooth X-ray-like uint8 image with a bright disc at a random place."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 50 + 90 * np.exp(-(((xx - w / 2) / (0.35 * w)) ** 2 + ((yy - h / 2) / (0.4 * h)) ** 2))
    img += rng.normal(0, 5, size=(h, w))
    cv2.circle(img, (int(rng.integers(5, w - 5)), int(rng.integers(5, h - 5))), max(3, w // 7), 230, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dicom(path: Path, arr: np.ndarray, *, photometric: str = "MONOCHROME2") -> Path:
    """An uncompressed DX DICOM file of ``arr`` (uint8 or uint16)."""
    ds = dx_dataset()
    set_pixels(ds, arr, photometric=photometric)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def make_mixed_folder(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """PNG, JPEG, 16-bit DICOM, MONOCHROME1 DICOM, a truncated PNG, a text file named .png, a README.

    Returns ``{"order": [...], "bad": [...], "skipped": [...]}`` with paths as ``cxr predict`` lists them.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_png(root / "a.png", phantom(rng))
    cv2.imwrite(str(root / "b.jpg"), phantom(rng), [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_dicom(root / "c.dcm", phantom(rng).astype(np.uint16) * 200)
    write_dicom(root / "d_mono1.dcm", 255 - phantom(rng), photometric="MONOCHROME1")
    data = cv2.imencode(".png", phantom(rng))[1].tobytes()
    (root / "e_broken.png").write_bytes(data[: len(data) // 2])
    (root / "f_notes.png").write_text("this is a text file, not an image\n")
    write_png(root / "sub" / "g.png", phantom(rng))
    (root / "README.txt").write_text("not an image\n")
    order = ["a.png", "b.jpg", "c.dcm", "d_mono1.dcm", "e_broken.png", "f_notes.png", "sub/g.png"]
    return {
        "order": [str(root / p) for p in order],
        "bad": [str(root / "e_broken.png"), str(root / "f_notes.png")],
        "skipped": [str(root / "README.txt")],
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
