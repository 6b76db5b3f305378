"""What ``cxr predict`` and ``cxr similarity`` read: lists of image files and labelled support sets.

An **input list** comes from one of three things a user has at hand:

* a folder: every image under it, recursively, in sorted order (extensions of
  :data:`~cxr_tools.data.decoding.imaging.IMAGE_EXTENSIONS`, plus extension-less files with the DICOM ``DICM`` magic,
  as PACS exports name them). Other files (``README.txt``, ``labels.csv``) are not images the user asked
  about: they are skipped and counted, never turned into error rows;
* a single image file;
* a CSV / text list (``.csv``, ``.tsv``, ``.txt``, ``.lst``): a ``path`` column, or a file of one path per
  line (a first line that is not a file is taken as a header). Relative paths are resolved against the
  list's folder, so a list travels with its images. Every listed path gets a row, even a missing one.

Each :class:`InputItem` keeps the path as the user wrote it (``display``: what goes into the ``path`` column
of the predictions, so scripts can join it back) and the path to open.

A **support set** (``--support``) is a CSV ``path,<label>...`` with 0/1 cells, or a folder with one
sub-folder per class and optionally a negative folder (``negative``, ``No Finding``, ``NORMAL``) whose images
are negative for every class. :func:`read_support` checks that every class has enough positives and at least
one negative, and names the class that does not.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_tools.data.decoding.imaging import IMAGE_EXTENSIONS
from cxr_tools.errors import DataError, InputError

log = logging.getLogger(__name__)

LIST_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".txt", ".lst")
NEGATIVE_FOLDERS: tuple[str, ...] = ("negative", "negatives", "no finding", "no_finding", "nofinding", "normal")
PATH_COLUMN = "path"


@dataclass(frozen=True)
class InputItem:
    """One input: ``display`` is the path as given (the CSV's ``path`` column), ``path`` the file to open."""

    display: str
    path: str


@dataclass(frozen=True)
class InputList:
    """The inputs in order, where they came from (``folder``, ``file``, ``list``) and the skipped files."""

    items: tuple[InputItem, ...]
    kind: str
    source: str
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class SupportSet:
    """A labelled support set: ``targets[i, j]`` is 1 when image ``i`` shows class ``classes[j]``."""

    items: tuple[InputItem, ...]
    classes: tuple[str, ...]
    targets: np.ndarray  # float32 [n, len(classes)]
    source: str

    def positives(self) -> dict[str, int]:
        """Positive images per class."""
        return {c: int(self.targets[:, j].sum()) for j, c in enumerate(self.classes)}


# --- input lists ---------------------------------------------------------------------------------------------


def is_image_file(path: Path) -> bool:
    """An image by extension, or an extension-less / unknown-extension file with the DICOM magic."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    from cxr_tools.data.sources.dicom import is_dicom_candidate

    return is_dicom_candidate(path)


def folder_images(root: Path) -> tuple[list[Path], list[Path]]:
    """``(images, skipped)`` under ``root``: recursive, sorted, hidden entries left out."""
    from cxr_tools.data.sources.table import walk_files

    images: list[Path] = []
    skipped: list[Path] = []
    for p in walk_files(root, None):
        (images if is_image_file(p) else skipped).append(p)
    return images, skipped


def list_inputs(source: str | os.PathLike[str]) -> InputList:
    """The inputs named by ``source`` (a folder, an image file, or a CSV/text list); see the module docstring.

    Raises:
        InputError: ``source`` does not exist, or a list file has no usable column.
    """
    src = Path(source)
    if src.is_dir():
        images, skipped = folder_images(src)
        if skipped:
            names = ", ".join(str(p.relative_to(src)) for p in skipped[:3])
            more = f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else ""
            log.warning("%s: skipped %d file(s) that are not images: %s%s", src, len(skipped), names, more)
        items = tuple(InputItem(str(p), str(p)) for p in images)
        return InputList(items, "folder", str(src), tuple(str(p) for p in skipped))
    if src.is_file() and src.suffix.lower() in LIST_EXTENSIONS:
        rows, _ = read_table(src)
        return InputList(tuple(_item(src, row[0]) for row in rows), "list", str(src))
    if src.is_file():
        return InputList((InputItem(str(source), str(src)),), "file", str(src))
    raise InputError(f"Input {source} does not exist.", "Pass an image folder, an image file or a CSV list of paths.")


def _item(list_file: Path, text: str) -> InputItem:
    p = Path(os.path.expanduser(text))
    return InputItem(text, str(p if p.is_absolute() else list_file.parent / p))


def _looks_like_header(list_file: Path, cell: str) -> bool:
    p = Path(cell)
    return p.suffix.lower() not in IMAGE_EXTENSIONS and not (list_file.parent / p).exists() and not p.exists()


def read_table(path: Path) -> tuple[list[list[str]], list[str]]:
    """Rows of a path list as ``[path, *other cells]`` and the names of the other columns.

    A table with a ``path`` column (any case) puts it first; a one-column file is a plain list of paths.
    Blank lines are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the list {path}: {exc}.", "Pass a UTF-8 CSV or text file.") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    raw = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    if not raw:
        return [], []
    header = [c.strip() for c in raw[0]]
    lower = [c.lower() for c in header]
    if PATH_COLUMN in lower:
        col = lower.index(PATH_COLUMN)
        others = [i for i in range(len(header)) if i != col]
        rows = []
        for n, r in enumerate(raw[1:], start=2):
            if len(r) != len(header):
                raise InputError(f"{path} line {n} has {len(r)} cells; the header has {len(header)}.")
            if r[col].strip():
                rows.append([r[col].strip(), *(r[i].strip() for i in others)])
        return rows, [header[i] for i in others]
    if max(len(r) for r in raw) == 1:
        cells = [r[0].strip() for r in raw]
        if cells and _looks_like_header(path, cells[0]):
            cells = cells[1:]
        return [[c] for c in cells if c], []
    raise InputError(
        f"{path} has several columns ({', '.join(header[:6])}) but none called '{PATH_COLUMN}'.",
        "Name the column of image paths 'path', or pass a file with one path per line.",
    )


# --- support sets --------------------------------------------------------------------------------------------


def read_support(source: str | os.PathLike[str], *, min_support: int = 1) -> SupportSet:
    """The labelled support set at ``source`` (CSV or class folders), checked for positives and negatives.

    Raises:
        InputError: ``source`` is missing or malformed.
        DataError: a class has fewer than ``min_support`` positives, or no negative image.
    """
    src = Path(source)
    if src.is_dir():
        support = _support_folder(src)
    elif src.is_file():
        support = _support_csv(src)
    else:
        raise InputError(f"Support set {source} does not exist.", "Pass a CSV path,<label>... or a class folder.")
    check_support_counts(support, min_support)
    return support


def _support_csv(path: Path) -> SupportSet:
    rows, columns = read_table(path)
    if not columns:
        raise InputError(
            f"The support list {path} has no label columns.",
            "Write a CSV with a 'path' column and one 0/1 column per class.",
        )
    targets = np.zeros((len(rows), len(columns)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row[1:]):
            value = _binary(cell)
            if value is None:
                raise InputError(
                    f"{path}: class column '{columns[j]}' has the value {cell!r} for {row[0]}.",
                    "Support labels must be 0 or 1 (an unlabelled image has no place in a support set).",
                )
            targets[i, j] = value
    items = tuple(_item(path, row[0]) for row in rows)
    return SupportSet(items, tuple(columns), targets, str(path))


def _binary(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if value in (0.0, 1.0) else None


def _support_folder(root: Path) -> SupportSet:
    from cxr_tools.data.sources.table import is_hidden

    folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    negatives = [p for p in folders if p.name.lower() in NEGATIVE_FOLDERS]
    classes = [p for p in folders if p.name.lower() not in NEGATIVE_FOLDERS]
    if not classes:
        raise InputError(
            f"The support folder {root} has no class sub-folders.",
            "Put the images of each class in ROOT/<class>/ and negatives in ROOT/negative/.",
        )
    items: list[InputItem] = []
    rows: list[np.ndarray] = []
    for j, folder in enumerate([*classes, *negatives]):
        images, _ = folder_images(folder)
        for p in images:
            items.append(InputItem(str(p), str(p)))
            row = np.zeros(len(classes), dtype=np.float32)
            if j < len(classes):
                row[j] = 1.0
            rows.append(row)
    targets = np.stack(rows) if rows else np.zeros((0, len(classes)), dtype=np.float32)
    return SupportSet(tuple(items), tuple(p.name for p in classes), targets, str(root))


def check_support_counts(support: SupportSet, min_support: int = 1) -> None:
    """Every class needs ``min_support`` positives and one negative (what prototypes and heads learn from)."""
    need = max(1, int(min_support))
    counts = support.positives()
    short = [f"{c} ({n})" for c, n in counts.items() if n < need]
    if short:
        raise DataError(
            f"The support set {support.source} has fewer than {need} positive image(s) for: {', '.join(short)}.",
            f"Add positives of those classes (--min-support {need}), or drop the class.",
        )
    n = len(support.items)
    no_negative = [c for c, k in counts.items() if k >= n]
    if no_negative:
        raise DataError(
            f"The support set {support.source} has no negative image for: {', '.join(no_negative)}.",
            "Add images without the finding (a 'negative' / 'No Finding' / 'NORMAL' folder, or 0 rows in the CSV).",
        )
