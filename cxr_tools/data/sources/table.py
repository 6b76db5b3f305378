"""The :class:`SourceTable` every dataset reader returns, and helpers the readers share.

A source table describes a dataset *without opening a single image*: one row per image with its absolute
path, patient, study, view, sex, age, official split and raw labels. ``cxr preprocess`` decodes the images
from it; label indexes and patient splits are built from it. Rows pointing at missing files are left out of
the table and listed in :attr:`SourceTable.problems` (they go to ``rejected.csv``; they are not fatal).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tools.data.decoding.imaging import IMAGE_EXTENSIONS
from cxr_tools.errors import DataError
from cxr_tools.runtime.fs import file_sha256

log = logging.getLogger(__name__)

SOURCE_KINDS: tuple[str, ...] = ("nih", "chexpert", "folder", "dicom", "synthetic")
BASE_COLUMNS: tuple[str, ...] = ("image_id", "source_path", "patient_id", "study", "view", "sex", "age", "split")
SPLITS: tuple[str, ...] = ("train", "val", "test", "")
VIEW_CHOICES: tuple[str, ...] = ("frontal", "lateral", "all", "PA", "AP")
LATERAL_VIEWS = frozenset({"LATERAL", "LAT", "LL", "RL", "LLD", "RLD", "XTABLE LATERAL"})
MAX_AGE = 120.0


@dataclass(frozen=True)
class SourceTable:
    """A dataset's image list with metadata and raw labels.

    Attributes:
        kind: ``nih``, ``chexpert``, ``folder``, ``dicom`` or ``synthetic`` (synthetic data in NIH/CheXpert layout).
        root: the dataset directory the table was read from.
        table: columns :data:`BASE_COLUMNS` then one float column per label (1, 0, -1 = uncertain, NaN = not
            mentioned); ``source_path`` absolute, ``age`` float (NaN when unknown), the others strings
            (``''`` when unknown). Row order is deterministic (CSV order, or sorted paths for folders).
        labels: the label columns, in order.
        metadata_file: the main metadata file (NIH ``Data_Entry`` CSV, CheXpert ``train.csv``, the DICOM
            ``--metadata`` CSV), or None.
        metadata_sha256: its SHA-256, for the cache manifest.
        metadata_files: every metadata file read (CSVs, split lists) -> SHA-256.
        problems: ``(source_path, reason)`` for listed rows whose file is missing or unreadable as metadata.
    """

    kind: str
    root: Path
    table: pd.DataFrame
    labels: tuple[str, ...]
    metadata_file: Path | None = None
    metadata_sha256: str | None = None
    metadata_files: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)

    def label_matrix(self) -> np.ndarray:
        """Raw labels as float32 [N, L] (NaN = not mentioned)."""
        return self.table.loc[:, list(self.labels)].to_numpy(dtype=np.float32, na_value=np.nan)


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """Read a metadata CSV with every cell as a string ('' when empty) and stripped column names."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{what} {path} is not a readable CSV: {msg}.", "Check the file is the right one.") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def require_columns(df: pd.DataFrame, required: Sequence[str], path: Path, what: str) -> None:
    """Raise :class:`DataError` naming every missing column, the file, and the closest existing names."""
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return
    present = [c for c in df.columns if not c.startswith("Unnamed:")]
    hints = []
    for col in missing:
        close = difflib.get_close_matches(col, present, n=2, cutoff=0.6)
        if not close:
            lowered = {c.lower(): c for c in present}
            close = [lowered[col.lower()]] if col.lower() in lowered else []
        if close:
            hints.append(f"'{col}' (found {' or '.join(repr(c) for c in close)} instead?)")
        else:
            hints.append(f"'{col}'")
    raise DataError(
        f"{what} {path} lacks column(s) {', '.join(hints)}.",
        f"Columns present: {', '.join(present)}. Fix the header or point --metadata at the right file.",
    )


def normalise_sex(values: Iterable[str]) -> list[str]:
    """M / F / '' from M, F, Male, Female, O, Unknown, ..."""
    out = []
    for v in values:
        s = str(v).strip().upper()
        out.append("M" if s in ("M", "MALE") else "F" if s in ("F", "FEMALE") else "")
    return out


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1.0 / 12, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


def parse_ages(values: Iterable[Any]) -> np.ndarray:
    """Ages in years as float; '058Y' / '006M' (DICOM AS, old NIH CSV) understood; missing or > 120 -> NaN.

    Ages above 120 are data-entry errors in NIH's CSV (e.g. 148, 411): the image is kept, the age dropped.
    """
    cells = [str(v).strip() if v is not None else "" for v in values]
    out = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    for i in np.flatnonzero(np.isnan(out)):  # only the non-plain-number cells: '058Y', '', 'unknown'
        m = _AGE.match(cells[i])
        if m:
            out[i] = float(m.group(1)) * _AGE_UNIT[m.group(2).upper()]
    out[(out > MAX_AGE) | (out < 0)] = np.nan
    return out


def normalise_view(value: str) -> str:
    """Upper-case view code; every lateral spelling becomes ``LATERAL``."""
    v = str(value).strip().upper()
    return "LATERAL" if v in LATERAL_VIEWS else v


def view_mask(views: Sequence[str], choice: str | Sequence[str]) -> np.ndarray:
    """Rows to keep for ``choice``: ``frontal`` (anything not lateral, unknown included), ``lateral``, ``all``,
    or explicit view codes (``PA``, ``AP``, ...). Several choices are OR-ed."""
    choices = [choice] if isinstance(choice, str) else list(choice)
    if not choices:
        raise DataError("No view chosen.", f"Use one or more of: {', '.join(VIEW_CHOICES)}.")
    arr = np.asarray([str(v) for v in views], dtype=object)
    keep = np.zeros(len(arr), dtype=bool)
    for c in choices:
        c_norm = str(c).strip()
        if c_norm.lower() == "all":
            keep[:] = True
        elif c_norm.lower() == "frontal":
            keep |= arr != "LATERAL"
        elif c_norm.lower() == "lateral":
            keep |= arr == "LATERAL"
        elif c_norm:
            keep |= arr == normalise_view(c_norm)
        else:
            raise DataError("Empty view choice.", f"Use one or more of: {', '.join(VIEW_CHOICES)}.")
    return keep


def is_hidden(name: str) -> bool:
    """Dot files, macOS resource forks (``._x.png``) and ``__MACOSX`` folders found in zip downloads."""
    return name.startswith(".") or name == "__MACOSX"


def walk_files(root: Path, extensions: Sequence[str] | None = IMAGE_EXTENSIONS) -> Iterator[Path]:
    """Files under ``root`` (recursive, sorted, hidden entries skipped), filtered by lower-cased extension.

    Symbolic links are followed, each real folder is entered once: a link back up the tree (a loop) or a
    second link to a folder already walked is skipped with a warning instead of listing its files again and
    again. A link to a file is listed like the file, a broken or looping one too (opening it gives the reason).
    """
    exts = None if extensions is None else {e.lower() for e in extensions}
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            log.warning("%s: already walked (a symbolic link loop or a second link to one folder); skipped", dirpath)
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if is_hidden(name):
                continue
            if exts is None or os.path.splitext(name)[1].lower() in exts:
                yield Path(dirpath) / name


def parse_label_cells(df: pd.DataFrame, columns: Sequence[str], path: Path, *, allowed: Sequence[float]) -> np.ndarray:
    """Label cells to float [N, L]: numbers in ``allowed`` kept, empty -> NaN, anything else a DataError."""
    out = np.full((len(df), len(columns)), np.nan, dtype=np.float64)
    allowed_set = {float(a) for a in allowed}
    for j, col in enumerate(columns):
        raw = df[col].astype(str).str.strip()
        num = pd.to_numeric(raw.where(raw != "", None), errors="coerce").to_numpy(dtype=np.float64)
        bad = (raw.to_numpy() != "") & ~np.isin(num, list(allowed_set))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column '{col}' has {int(bad.sum())} invalid label value(s), e.g. {raw.iloc[i]!r} on "
                f"data row {i + 1} (line {i + 2}).",
                f"Label cells must be one of {sorted(allowed_set)} or empty.",
            )
        out[:, j] = num
    return out


def finish(
    kind: str,
    root: Path,
    meta: dict[str, Any],
    labels: Sequence[str],
    values: np.ndarray,
    *,
    metadata_file: Path | None,
    metadata_files: Sequence[Path] = (),
    problems: list[tuple[str, str]] | None = None,
) -> SourceTable:
    """Assemble a :class:`SourceTable` from column arrays (``meta`` holds :data:`BASE_COLUMNS`)."""
    n = len(meta["image_id"])
    cols: dict[str, Any] = {}
    for c in BASE_COLUMNS:
        if c == "age":
            cols[c] = np.asarray(meta.get(c, np.full(n, np.nan)), dtype=np.float64)
        else:
            cols[c] = pd.array([str(x) for x in meta.get(c, [""] * n)], dtype="str")
    values = np.asarray(values, dtype=np.float64).reshape(n, len(labels))
    for j, lab in enumerate(labels):
        cols[lab] = values[:, j]
    table = pd.DataFrame(cols)
    dup = table["image_id"].duplicated()
    if dup.any():
        raise DataError(
            f"{kind} source at {root}: {int(dup.sum())} duplicate image id(s), e.g. "
            f"{table['image_id'][dup].iloc[0]!r}.",
            "Each image must be listed once; remove the duplicates from the metadata.",
        )
    hashes = {str(p): file_sha256(p) for p in metadata_files}
    main_hash = hashes.get(str(metadata_file)) if metadata_file is not None else None
    if metadata_file is not None and main_hash is None:
        main_hash = file_sha256(metadata_file)
        hashes[str(metadata_file)] = main_hash
    return SourceTable(
        kind=kind,
        root=root,
        table=table,
        labels=tuple(labels),
        metadata_file=metadata_file,
        metadata_sha256=main_hash,
        metadata_files=hashes,
        problems=list(problems or []),
    )
