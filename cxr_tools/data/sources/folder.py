"""Image folders with one class per sub-folder (e.g. the Kaggle pneumonia set ``train/NORMAL``, ``train/PNEUMONIA``).

Layouts: ``ROOT/CLASS/**/image`` or, with an official split, ``ROOT/{train,val,test}/CLASS/**/image``
(``valid`` / ``validation`` count as ``val``; case-insensitive). Other top-level folders next to split folders
(such as the duplicate ``chest_xray/`` and ``__MACOSX/`` inside the Kaggle zip) are ignored with a warning.

Every class becomes one label column (one-hot: 1 for the image's class, 0 for the others), a class named
``NORMAL`` or ``No Finding`` included: keeping the folder names as they are makes the label space exactly
what the user sees on disk, and the canonical mapping (:func:`cxr_tools.data.labels.canonical_label`) is
applied downstream where label spaces are compared. The patient id is the ``personNNN`` prefix of the
pneumonia set's file names (``person1_bacteria_1.jpeg``), else the file stem. Images are found by listing
folders (extensions png, jpg, jpeg, bmp, tif, tiff, dcm, dicom); none is opened. Images not inside a class
folder are reported as problems.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from cxr_tools.data.decoding.imaging import IMAGE_EXTENSIONS
from cxr_tools.data.sources.table import SourceTable, finish, is_hidden, view_mask, walk_files
from cxr_tools.errors import DataError

log = logging.getLogger(__name__)

SPLIT_DIRS: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)


def patient_from_name(path: Path) -> str:
    """``person12_virus_3.jpeg`` -> ``person12``; anything else -> its stem."""
    m = _PERSON.match(path.name)
    return m.group(1).lower() if m else path.stem


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not is_hidden(p.name))


def split_dirs(root: Path) -> list[tuple[Path, str]]:
    """Top-level split folders of ``root`` with their split name (empty when there are none)."""
    return [(d, SPLIT_DIRS[d.name.lower()]) for d in _subdirs(root) if d.name.lower() in SPLIT_DIRS]


def read_folder(
    root: Path,
    *,
    views: str | tuple[str, ...] = "frontal",
    kind: str = "folder",
) -> SourceTable:
    """Read a class-per-folder image directory; see the module docstring."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory.")
    splits = split_dirs(root)
    if splits:
        ignored = [d.name for d in _subdirs(root) if d.name.lower() not in SPLIT_DIRS]
        if ignored:
            log.warning("%s: ignoring folder(s) %s next to the split folders", root, ", ".join(ignored))
        groups = splits
    else:
        groups = [(root, "")]

    problems: list[tuple[str, str]] = []
    rows: list[tuple[Path, str, str]] = []  # (path, class, split)
    for base, split in groups:
        for f in sorted(p for p in base.iterdir() if p.is_file() and not is_hidden(p.name)):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                problems.append((str(f), "not inside a class folder"))
        for cls_dir in _subdirs(base):
            for f in walk_files(cls_dir, IMAGE_EXTENSIONS):
                rows.append((f, cls_dir.name, split))
    if not rows:
        raise DataError(
            f"No images in class sub-folders of {root}.",
            "Expected ROOT/CLASS/*.png or ROOT/train/CLASS/*.png (png, jpg, jpeg, bmp, tif, tiff, dcm).",
        )
    classes = sorted({c for _, c, _ in rows})
    col = {c: j for j, c in enumerate(classes)}
    values = np.zeros((len(rows), len(classes)), dtype=np.float64)
    for i, (_, c, _) in enumerate(rows):
        values[i, col[c]] = 1.0
    keep = view_mask([""] * len(rows), views)
    idx = np.flatnonzero(keep)
    meta = {
        "image_id": [rows[i][0].relative_to(root).as_posix() for i in idx],
        "source_path": [str(rows[i][0]) for i in idx],
        "patient_id": [patient_from_name(rows[i][0]) for i in idx],
        "split": [rows[i][2] for i in idx],
    }
    if problems:
        log.warning("%d image(s) of %s are not inside a class folder and are skipped", len(problems), root)
    return finish(kind, root, meta, classes, values[idx], metadata_file=None, problems=problems)
