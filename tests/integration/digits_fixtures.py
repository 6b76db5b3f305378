"""A real-image, single-label class-folder dataset for the meta-training tests: scikit-learn's ``load_digits``
(1,797 grey 8x8 handwritten digits in 10 classes, shipped with scikit-learn: no download).

``from digits_fixtures import digits_cache, SPLIT`` (``tests/integration`` is where pytest runs these tests; the
module is imported from the test files next to it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Folder (class) names: no "No Finding", so a negative of an episode is an image of another class.
CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Five meta-train classes, two meta-val classes (too few for 2-way episodes with negatives), three meta-test.
SPLIT = "train=zero,one,two,three,four;val=five,six;test=seven,eight,nine"


def write_digits(root: Path, size: int) -> Path:
    """``root/<class>/d<i>.png``: every digit upscaled to ``size`` px (file stems are unique: one patient each)."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / CLASSES[int(target)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = cv2.resize((image / 16.0 * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"d{i:04d}.png"), pixels)
    return root


def digits_cache(tmp_path: Path, size: int = 16) -> Path:
    """The digits written as class folders, then preprocessed by ``cxr preprocess``'s engine at ``size`` px."""
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    src = write_digits(tmp_path / "digits", size)
    cache = tmp_path / f"digits-{size}px"
    preprocess(PreprocessConfig(src=src, output=cache, size=size, workers=0, seed=0))
    return cache
