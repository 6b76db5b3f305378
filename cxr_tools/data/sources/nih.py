"""NIH ChestX-ray14 (and the synthetic phantom data written in its layout).

Reads ``Data_Entry_2017_v2020.csv`` (11 fields a row: the bracketed header names contain commas, so pandas
calls them ``OriginalImage[Width`` and ``Height]``) or the older ``Data_Entry_2017.csv`` (a trailing comma
gives an extra unnamed empty column; some ages above 120, which become NaN while the image is kept). Images
(PNG, or whatever image/DICOM files the CSV names) live in a flat ``images/`` folder or in Kaggle's
``images_NNN/images/``; the image map is built by listing those folders once, never by opening images.
Labels come from ``Finding Labels`` (14 columns of 1/0;
``No Finding`` = all zeros). The official split comes from ``train_val_list.txt`` (``train`` here; the
validation carve-out is done later, by patient) and ``test_list.txt``.

An unknown finding name is a :class:`DataError` naming it, its line and the file: a misspelled label is a
systematic problem of the metadata (a wrong or edited CSV), and skipping those rows would silently change
label frequencies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.decoding.imaging import IMAGE_EXTENSIONS
from cxr_tools.data.labels import NIH_LABELS, parse_nih_findings
from cxr_tools.data.sources.table import (
    SourceTable,
    finish,
    is_hidden,
    normalise_sex,
    normalise_view,
    parse_ages,
    read_csv,
    require_columns,
    view_mask,
)
from cxr_tools.errors import DataError

log = logging.getLogger(__name__)

CSV_NAMES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_LISTS: dict[str, str] = {"train_val_list.txt": "train", "test_list.txt": "test"}
REQUIRED: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)


def find_csv(root: Path) -> Path | None:
    """The NIH metadata CSV in ``root`` (the v2020 file preferred), or None."""
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def image_dirs(root: Path) -> list[Path]:
    """Where NIH images may be: ``images/``, Kaggle's ``images_NNN/images/`` (or ``images_NNN/``), ``root``."""
    dirs = []
    if (root / "images").is_dir():
        dirs.append(root / "images")
    for d in sorted(root.glob("images_*")):
        if d.is_dir():
            dirs.append(d / "images" if (d / "images").is_dir() else d)
    return dirs or [root]


def image_map(dirs: list[Path]) -> dict[str, str]:
    """File name -> path over ``dirs``, by listing each once (first occurrence wins)."""
    found: dict[str, str] = {}
    dups = 0
    for d in dirs:
        with os.scandir(d) as it:
            for entry in it:
                name = entry.name
                if is_hidden(name) or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                if name in found:
                    dups += 1
                    continue
                found[name] = entry.path
    if dups:
        log.warning("%d image name(s) occur in more than one NIH image folder; the first is used", dups)
    return found


def _read_split_lists(base: Path) -> tuple[dict[str, str], list[Path]]:
    splits: dict[str, str] = {}
    files = []
    for name, split in SPLIT_LISTS.items():
        path = base / name
        if not path.is_file():
            continue
        files.append(path)
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line:
                splits[line] = split
    return splits, files


def _multi_hot(cells: np.ndarray, path: Path) -> np.ndarray:
    """Finding-label cells -> [N, 14] of 1/0, parsing each distinct cell once (NIH has ~800 distinct)."""
    uniq, inverse = np.unique(cells.astype(str), return_inverse=True)
    rows = np.zeros((len(uniq), len(NIH_LABELS)), dtype=np.float64)
    col = {name: j for j, name in enumerate(NIH_LABELS)}
    for u, cell in enumerate(uniq):
        try:
            names = parse_nih_findings(cell, source=f"'Finding Labels' of {path}")
        except DataError as exc:
            line = int(np.flatnonzero(cells == cell)[0]) + 2
            raise DataError(f"{exc.message[:-1]} (line {line}).", exc.hint) from None
        if not names and cell.strip() == "":
            line = int(np.flatnonzero(cells == cell)[0]) + 2
            raise DataError(
                f"Empty 'Finding Labels' cell on line {line} of {path}.",
                "Write 'No Finding' for images without findings.",
            )
        for name in names:
            rows[u, col[name]] = 1.0
    return rows[inverse.reshape(-1)]


def _patient_ids(values: list[str]) -> list[str]:
    out = []
    for v in values:
        s = str(v).strip()
        out.append(f"{int(s):08d}" if s.isdigit() else s)
    return out


def read_nih(
    root: Path,
    *,
    metadata: Path | None = None,
    views: str | tuple[str, ...] = "frontal",
    kind: str = "nih",
) -> SourceTable:
    """Read an NIH ChestX-ray14 directory; see the module docstring."""
    root = Path(root).resolve()
    csv = Path(metadata).resolve() if metadata is not None else find_csv(root)
    if csv is None:
        raise DataError(
            f"No NIH metadata CSV in {root} (looked for {' / '.join(CSV_NAMES)}).",
            "Download it (cxr download kaggle) or pass --metadata PATH.",
        )
    df = read_csv(csv, "NIH metadata CSV")
    require_columns(df, REQUIRED, csv, "NIH metadata CSV")
    extra = [c for c in df.columns if c.startswith("Unnamed:") and (df[c] != "").any()]
    if extra:
        log.warning("%s: unnamed column(s) %s hold values; ignored", csv, ", ".join(extra))

    names = np.asarray(df["Image Index"].str.strip().tolist(), dtype=object)
    empty = names == ""
    if empty.any():
        raise DataError(f"Empty 'Image Index' on line {int(np.flatnonzero(empty)[0]) + 2} of {csv}.")
    labels = _multi_hot(df["Finding Labels"].str.strip().to_numpy(dtype=object), csv)
    splits, split_files = _read_split_lists(csv.parent)
    follow = df["Follow-up #"].str.strip().tolist()
    meta: dict[str, Any] = {
        "image_id": names,
        "patient_id": _patient_ids(df["Patient ID"].tolist()),
        "study": [f"{int(f):03d}" if f.isdigit() else f for f in follow],
        "view": [normalise_view(v) for v in df["View Position"].tolist()],
        "sex": normalise_sex(df["Patient Gender"].tolist()),
        "age": parse_ages(df["Patient Age"].tolist()),
        "split": [splits.get(n, "") for n in names],
    }

    keep = view_mask(meta["view"], views)
    files = image_map(image_dirs(root))
    if not files:
        raise DataError(
            f"No images found for {csv.name} under {root}.",
            "Expected images/*.png or Kaggle's images_NNN/images/*.png; extract the archives there.",
        )
    paths = [files.get(n) for n in names]
    problems: list[tuple[str, str]] = []
    for i, p in enumerate(paths):
        if p is None and keep[i]:
            problems.append((os.path.join(root, "images", names[i]), f"listed in {csv.name} but not found"))
            keep[i] = False
    if problems:
        log.warning("%d of %d images listed in %s are missing under %s", len(problems), len(names), csv.name, root)
        if not keep.any():
            raise DataError(
                f"None of the {len(problems)} images listed in {csv} exist under {root}.",
                "Expected images/*.png or Kaggle's images_NNN/images/*.png with the names in 'Image Index'.",
            )
    idx = np.flatnonzero(keep)
    meta_kept = {k: [v[i] for i in idx] if not isinstance(v, np.ndarray) else v[idx] for k, v in meta.items()}
    meta_kept["source_path"] = [paths[i] for i in idx]
    return finish(
        kind,
        root,
        meta_kept,
        NIH_LABELS,
        labels[idx],
        metadata_file=csv,
        metadata_files=[csv, *split_files],
        problems=problems,
    )
