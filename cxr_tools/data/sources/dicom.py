"""A folder (searched recursively) of DICOM files, the format hospitals export.

Files are recognised by extension (``.dcm``, ``.dicom``) or, for extension-less names such as UIDs, by the
``DICM`` magic at byte 128. Only headers are read (``stop_before_pixels=True``): patient id (``PatientID``;
``StudyInstanceUID`` or the file stem when it is empty), study (``StudyInstanceUID``), view
(``ViewPosition``, else the view code sequence), sex (``PatientSex``) and age (``PatientAge``, else birth date
vs study date). A file whose header cannot be read is a problem, not an error.

Labels, optional:
- ``metadata`` CSV with a key column ``path`` (relative to the root, or absolute) or ``SOPInstanceUID``, an
  optional ``split`` column, optional ``patient_id`` / ``study`` / ``view`` / ``sex`` / ``age`` columns that
  override the header (useful after anonymisation), and every other column a label (1 / 0 / -1 / empty).
  Files the CSV does not list are left out (with a warning), since "not mentioned" would count as negative.
- ``folder_labels=True``: the first-level sub-folder name is the class (one-hot), as for image folders.
Without either, the table has no label columns (enough for ``cxr predict`` or unlabelled pre-training).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.decoding.imaging import DICOM_EXTENSIONS, IMAGE_EXTENSIONS
from cxr_tools.data.sources.table import (
    BASE_COLUMNS,
    SourceTable,
    finish,
    normalise_sex,
    normalise_view,
    parse_ages,
    parse_label_cells,
    read_csv,
    view_mask,
    walk_files,
)
from cxr_tools.errors import DataError

log = logging.getLogger(__name__)

_NOT_DICOM_EXTS = {*IMAGE_EXTENSIONS, ".csv", ".txt", ".json", ".xml", ".md", ".html", ".zip", ".gz", ".tar", ".yaml"}
_HEADER_TAGS = [
    "SOPInstanceUID",
    "PatientID",
    "StudyInstanceUID",
    "ViewPosition",
    "ViewCodeSequence",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
    "AcquisitionDate",
]
_KEY_COLUMNS = ("path", "file", "filename", "sopinstanceuid", "sop_instance_uid")
_OVERRIDE_COLUMNS = ("split", "patient_id", "study", "view", "sex", "age")


def has_dicm_magic(path: Path) -> bool:
    """True when the file has the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_candidate(path: Path) -> bool:
    """DICOM by extension, or an extension-less (or UID-like) name with the DICM magic."""
    ext = path.suffix.lower()
    if ext in DICOM_EXTENSIONS:
        return True
    return ext not in _NOT_DICOM_EXTS and has_dicm_magic(path)


def dicom_files(root: Path) -> list[Path]:
    """Every DICOM file under ``root``, sorted."""
    return [p for p in walk_files(root, None) if is_dicom_candidate(p)]


def _text(ds: Any, tag: str) -> str:
    value = ds.get(tag)
    return "" if value is None else str(value).strip()


def _view(ds: Any) -> str:
    view = _text(ds, "ViewPosition")
    if not view:
        seq = ds.get("ViewCodeSequence")
        meaning = str(seq[0].get("CodeMeaning", "")).lower() if seq else ""
        if "lateral" in meaning:
            view = "LATERAL"
        elif "postero-anterior" in meaning or "posteroanterior" in meaning:
            view = "PA"
        elif "antero-posterior" in meaning or "anteroposterior" in meaning:
            view = "AP"
    return normalise_view(view)


def _age(ds: Any) -> float:
    age = float(parse_ages([_text(ds, "PatientAge")])[0])
    if np.isnan(age):
        birth = _text(ds, "PatientBirthDate")
        when = _text(ds, "StudyDate") or _text(ds, "AcquisitionDate")
        try:
            b = _dt.datetime.strptime(birth[:8], "%Y%m%d").date()
            w = _dt.datetime.strptime(when[:8], "%Y%m%d").date()
        except ValueError:
            return float("nan")
        years = (w - b).days / 365.25
        age = years if 0 <= years <= 120 else float("nan")
    return age


def read_header(path: Path) -> dict[str, Any]:
    """Metadata of one DICOM file from its header only; raises ValueError with a short reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable DICOM header ({type(exc).__name__})") from None
    if not getattr(ds, "file_meta", None) and not ds.get("SOPInstanceUID") and not ds.get("PatientID"):
        raise ValueError("not a DICOM file")
    study = _text(ds, "StudyInstanceUID")
    return {
        "uid": _text(ds, "SOPInstanceUID"),
        "patient_id": _text(ds, "PatientID") or study or path.stem,
        "study": study,
        "view": _view(ds),
        "sex": normalise_sex([_text(ds, "PatientSex")])[0],
        "age": _age(ds),
    }


def _key_column(columns: list[str]) -> str:
    lowered = {c.lower(): c for c in columns}
    for key in _KEY_COLUMNS:
        if key in lowered:
            return lowered[key]
    raise DataError(
        f"The DICOM metadata CSV has no key column (one of {', '.join(_KEY_COLUMNS)}).",
        f"Columns present: {', '.join(columns)}. Add a 'path' column (relative to the DICOM folder).",
    )


def read_dicom(
    root: Path,
    *,
    metadata: Path | None = None,
    views: str | tuple[str, ...] = "frontal",
    folder_labels: bool = False,
    kind: str = "dicom",
) -> SourceTable:
    """Read a DICOM folder; see the module docstring."""
    root = Path(root).resolve()
    if metadata is not None and folder_labels:
        raise DataError("Give either a metadata CSV or folder labels for a DICOM source, not both.")
    files = dicom_files(root)
    if not files:
        raise DataError(f"No DICOM files under {root}.", "Expected *.dcm / *.dicom or files with a DICM header.")

    problems: list[tuple[str, str]] = []
    records: list[dict[str, Any]] = []
    for f in files:
        try:
            rec = read_header(f)
        except ValueError as exc:
            problems.append((str(f), str(exc)))
            continue
        rec["path"] = f
        rec["image_id"] = f.relative_to(root).as_posix()
        rec["split"] = ""
        records.append(rec)

    labels: tuple[str, ...] = ()
    values = np.zeros((len(records), 0))
    metadata_file = None
    if metadata is not None:
        metadata_file = Path(metadata).resolve()
        records, labels, values = _apply_metadata(root, metadata_file, records, problems)
    elif folder_labels:
        classes = []
        for rec in records:
            parts = Path(rec["image_id"]).parts
            rec["class"] = parts[0] if len(parts) > 1 else ""
            if rec["class"] == "":
                problems.append((str(rec["path"]), "not inside a class folder"))
        records = [r for r in records if r["class"]]
        classes = sorted({r["class"] for r in records})
        labels = tuple(classes)
        values = np.zeros((len(records), len(classes)))
        for i, r in enumerate(records):
            values[i, classes.index(r["class"])] = 1.0
    if not records:
        raise DataError(f"No usable DICOM files under {root} ({len(problems)} problem(s)).")

    keep = view_mask([r["view"] for r in records], views)
    idx = np.flatnonzero(keep)
    meta: dict[str, Any] = {c: [records[i].get(c, "") for i in idx] for c in BASE_COLUMNS if c != "source_path"}
    meta["source_path"] = [str(records[i]["path"]) for i in idx]
    meta["age"] = np.asarray([records[i]["age"] for i in idx], dtype=np.float64)
    return finish(kind, root, meta, labels, values[idx], metadata_file=metadata_file, problems=problems)


def _apply_metadata(
    root: Path, csv: Path, records: list[dict[str, Any]], problems: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], tuple[str, ...], np.ndarray]:
    df = read_csv(csv, "DICOM metadata CSV")
    key = _key_column(list(df.columns))
    by_uid = key.lower() in ("sopinstanceuid", "sop_instance_uid")
    lowered = {c.lower(): c for c in df.columns}
    overrides = {c: lowered[c] for c in _OVERRIDE_COLUMNS if c in lowered}
    label_cols = [c for c in df.columns if c != key and c.lower() not in _OVERRIDE_COLUMNS]
    values = parse_label_cells(df, label_cols, csv, allowed=(1.0, 0.0, -1.0))

    index = {r["uid"]: r for r in records if r["uid"]} if by_uid else {os.path.normpath(r["path"]): r for r in records}
    out: list[dict[str, Any]] = []
    rows: list[int] = []
    seen: set[int] = set()
    for i, k in enumerate(df[key].str.strip()):
        rec = index.get(k if by_uid else os.path.normpath(root / k))
        if rec is None:
            where = k if by_uid else str(root / k)
            problems.append((where, f"listed in {csv.name} but no such DICOM file"))
            continue
        if id(rec) in seen:
            raise DataError(f"{csv}: '{k}' is listed twice (line {i + 2}).")
        seen.add(id(rec))
        for col, src in overrides.items():
            cell = str(df.at[i, src]).strip()
            if not cell:
                continue
            if col == "split":
                if cell not in ("train", "val", "test"):
                    raise DataError(f"{csv}: split {cell!r} on line {i + 2} is not train, val or test.")
                rec[col] = cell
            elif col == "age":
                rec[col] = float(parse_ages([cell])[0])
            elif col == "sex":
                rec[col] = normalise_sex([cell])[0]
            elif col == "view":
                rec[col] = normalise_view(cell)
            else:
                rec[col] = cell
        out.append(rec)
        rows.append(i)
    unlisted = len(records) - len(out)
    if unlisted:
        log.warning("%d DICOM file(s) under %s are not listed in %s and are left out", unlisted, root, csv)
    return out, tuple(label_cols), values[rows] if rows else np.zeros((0, len(label_cols)))
