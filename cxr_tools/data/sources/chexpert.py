"""CheXpert (and synthetic data written in its layout).

``train.csv`` and ``valid.csv`` hold ``Path,Sex,Age,Frontal/Lateral,AP/PA`` and the 14 observations with cells
``1.0`` / ``0.0`` / ``-1.0`` (uncertain) / empty (not mentioned), kept raw as 1 / 0 / -1 / NaN: the uncertainty
policy is applied at load time. ``train.csv`` rows get split ``''`` (patient-disjoint train/val/test are carved
from them later), ``valid.csv`` rows ``'val'`` (CheXpert's official, radiologist-labelled validation set).

``Path`` (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``) is relative to the directory
*above* the dataset folder. It is resolved against the folder that holds the CSV, with or without that first
component, so ``root`` may be the dataset folder, its parent, or a renamed copy. The patient id is the
``patientNNNNN`` part, the study the ``studyN`` part; the view is ``LATERAL``, or ``AP`` / ``PA`` for frontal
images (``FRONTAL`` when the projection is not given). Frontal views are kept by default.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from cxr_tools.data.labels import CHEXPERT_LABELS, CHEXPERT_META_COLUMNS
from cxr_tools.data.sources.table import (
    SourceTable,
    finish,
    normalise_sex,
    parse_ages,
    parse_label_cells,
    read_csv,
    require_columns,
    view_mask,
)
from cxr_tools.errors import DataError

log = logging.getLogger(__name__)

CSV_FILES: dict[str, str] = {"train.csv": "", "valid.csv": "val"}
_PATIENT = re.compile(r"(patient\d+)", re.IGNORECASE)
_STUDY = re.compile(r"(study\d+)", re.IGNORECASE)
_TOP_PARTS = {"train", "valid", "test"}


def _has_chexpert_header(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return False
    return first.strip().startswith("Path,") and "Frontal/Lateral" in first


def find_csv_dir(root: Path) -> Path | None:
    """The folder holding CheXpert's ``train.csv`` / ``valid.csv``: ``root`` or one sub-folder of it."""
    candidates = [root, *sorted(p for p in root.glob("CheXpert*") if p.is_dir())]
    candidates += sorted(p for p in root.iterdir() if p.is_dir() and p not in candidates) if root.is_dir() else []
    for d in candidates:
        if any(_has_chexpert_header(d / name) for name in CSV_FILES):
            return d
    return None


def _resolver(csv_dir: Path, rel_paths: list[str]) -> tuple[Path, bool]:
    """Pick (base, strip_first) that makes the most of a sample of ``Path`` cells exist."""
    options: list[tuple[Path, bool]] = [(csv_dir, True), (csv_dir.parent, False), (csv_dir, False)]
    sample = rel_paths[:: max(1, len(rel_paths) // 50)][:50]
    best, best_hits = options[0], -1
    for base, strip in options:
        hits = sum(os.path.exists(_resolve(base, strip, p)) for p in sample)
        if hits > best_hits:
            best, best_hits = (base, strip), hits
    return best


def _resolve(base: Path, strip_first: bool, rel: str) -> str:
    parts = rel.replace("\\", "/").lstrip("/").split("/")
    if strip_first and len(parts) > 1 and parts[0].lower() not in _TOP_PARTS:
        parts = parts[1:]
    return os.path.join(base, *parts)


def _views(frontal_lateral: list[str], ap_pa: list[str]) -> list[str]:
    out = []
    for fl, proj in zip(frontal_lateral, ap_pa, strict=True):
        fl, proj = fl.strip().lower(), proj.strip().upper()
        if fl == "lateral" or proj in ("LL", "RL", "LATERAL"):
            out.append("LATERAL")
        elif proj in ("AP", "PA"):
            out.append(proj)
        else:
            out.append("FRONTAL" if fl == "frontal" else proj)
    return out


def read_chexpert(
    root: Path,
    *,
    metadata: Path | None = None,
    views: str | tuple[str, ...] = "frontal",
    kind: str = "chexpert",
) -> SourceTable:
    """Read a CheXpert directory (``train.csv`` + ``valid.csv``, or the one CSV given as ``metadata``)."""
    root = Path(root).resolve()
    if metadata is not None:
        csvs = [Path(metadata).resolve()]
        csv_dir = csvs[0].parent
    else:
        found = find_csv_dir(root)
        if found is None:
            raise DataError(
                f"No CheXpert train.csv / valid.csv in {root} or its CheXpert-v1.0*/ sub-folder.",
                "Point at the extracted CheXpert folder or pass --metadata PATH.",
            )
        csv_dir = found
        csvs = [csv_dir / name for name in CSV_FILES if (csv_dir / name).is_file()]

    frames = []
    for csv in csvs:
        df = read_csv(csv, "CheXpert CSV")
        require_columns(df, (*CHEXPERT_META_COLUMNS, *CHEXPERT_LABELS), csv, "CheXpert CSV")
        values = parse_label_cells(df, CHEXPERT_LABELS, csv, allowed=(1.0, 0.0, -1.0))
        frames.append((csv, df, values))

    rel_all = [p.strip() for _, df, _ in frames for p in df["Path"]]
    if not rel_all:
        raise DataError(f"The CheXpert CSV(s) {', '.join(str(c) for c in csvs)} list no images.")
    empty = [i for i, p in enumerate(rel_all) if not p]
    if empty:
        raise DataError(f"Empty 'Path' cell in the CheXpert CSV(s) under {csv_dir} (data row {empty[0] + 1}).")
    base, strip = _resolver(csv_dir, rel_all)

    ids, paths, patients, studies, splits, sexes, ages, view_list, label_rows = [], [], [], [], [], [], [], [], []
    for csv, df, values in frames:
        rel = [p.strip() for p in df["Path"]]
        split = CSV_FILES.get(csv.name, "val" if "valid" in csv.stem.lower() else "")
        ids += rel
        paths += [_resolve(base, strip, p) for p in rel]
        for p in rel:
            m = _PATIENT.search(p)
            parts = p.replace("\\", "/").split("/")
            patients.append(m.group(1).lower() if m else (parts[-3] if len(parts) >= 3 else p))
            s = _STUDY.search(p)
            studies.append(s.group(1).lower() if s else (parts[-2] if len(parts) >= 2 else ""))
        splits += [split] * len(df)
        sexes += normalise_sex(df["Sex"])
        ages.append(parse_ages(df["Age"]))
        view_list += _views(list(df["Frontal/Lateral"]), list(df["AP/PA"]))
        label_rows.append(values)

    keep = view_mask(view_list, views)
    problems: list[tuple[str, str]] = []
    for i in np.flatnonzero(keep):
        if not os.path.isfile(paths[i]):
            problems.append((paths[i], "listed in the CheXpert CSV but not found"))
            keep[i] = False
    if problems:
        log.warning("%d images listed in the CheXpert CSV(s) are missing under %s", len(problems), base)
    if len(problems) == int(view_mask(view_list, views).sum()) and problems:
        raise DataError(
            f"None of the {len(problems)} images listed in the CheXpert CSV(s) exist; e.g. {problems[0][0]}.",
            "Point at the folder that holds train.csv and the train/ and valid/ image folders.",
        )
    idx = np.flatnonzero(keep)
    meta = {
        "image_id": [ids[i] for i in idx],
        "source_path": [paths[i] for i in idx],
        "patient_id": [patients[i] for i in idx],
        "study": [studies[i] for i in idx],
        "view": [view_list[i] for i in idx],
        "sex": [sexes[i] for i in idx],
        "age": np.concatenate(ages)[idx],
        "split": [splits[i] for i in idx],
    }
    return finish(
        kind,
        root,
        meta,
        CHEXPERT_LABELS,
        np.concatenate(label_rows)[idx],
        metadata_file=csvs[0],
        metadata_files=csvs,
        problems=problems,
    )
