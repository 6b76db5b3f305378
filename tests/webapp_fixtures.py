"""A tiny world for the ``cxr app`` tests: a cache, a supervised run, an evaluation of it, and upload files
(readable phantoms, positives and negatives of finding A, a text file named .png, a DICOM without pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from dicom_fixtures import dx_dataset
from evaluate_factory import make_eval_cache, make_run
from predict_fixtures import phantom, write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache

FAST_EVAL = ["--episodes", "3", "--shots", "2", "--queries", "3", "--device", "cpu", "--steps", "5"]


@dataclass(frozen=True)
class World:
    root: Path
    cache: Path
    run: Path
    evaluation: Path
    images: list[Path]
    positives: list[Path]
    negatives: list[Path]
    text_png: Path
    no_pixels: Path
    colour: Path


def make_world(root: Path, *, evaluate: bool = True) -> World:
    root.mkdir(parents=True, exist_ok=True)
    cache = make_eval_cache(root)
    run = make_run(root, cache, "supervised")
    evaluation = run / "eval"
    if evaluate:
        res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(cache), *FAST_EVAL])
        assert res.exit_code == 0, res.output
    uploads = root / "uploads"
    rng = np.random.default_rng(0)
    images = [write_png(uploads / f"phantom{i}.png", phantom(rng)) for i in range(2)]
    with open_cache(cache) as reader:
        a = reader.raw_labels(["A"])[:, 0]
        pos_rows = [int(r) for r in np.flatnonzero(a == 1)[:3]]
        neg_rows = [int(r) for r in np.flatnonzero(a == 0)[:3]]
        positives = [write_png(uploads / "pos" / f"a{r}.png", reader[r]) for r in pos_rows]
        negatives = [write_png(uploads / "neg" / f"n{r}.png", reader[r]) for r in neg_rows]
    text_png = uploads / "notes.png"
    text_png.write_text("this is not an image\n")
    no_pixels = uploads / "empty.dcm"
    dx_dataset().save_as(no_pixels, enforce_file_format=True)
    colour = uploads / "photo.png"
    photo = np.zeros((40, 40, 3), np.uint8)
    photo[:, :, 2] = 220  # red (BGR)
    photo[:, :20, 1] = 180
    cv2.imwrite(str(colour), photo)
    return World(root, cache, run, evaluation, images, positives, negatives, text_png, no_pixels, colour)
