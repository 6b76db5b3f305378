"""Dataset sources: turn a dataset directory into a :class:`SourceTable` without opening any image.

Kinds: ``nih`` (ChestX-ray14, flat or Kaggle layout), ``chexpert``, ``folder`` (one class per sub-folder),
``dicom`` (a DICOM folder) and ``synthetic`` (the built-in phantom data, written in the NIH or CheXpert
layout and read by those readers). :func:`detect_source` recognises each from its files;
:func:`load_source` dispatches. ``cxr preprocess`` decodes the images the table lists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_tools.data.sources.table import (
    BASE_COLUMNS,
    SOURCE_KINDS,
    VIEW_CHOICES,
    SourceTable,
    is_hidden,
)
from cxr_tools.errors import ConfigError, DataError, InputError

__all__ = [
    "BASE_COLUMNS",
    "SOURCE_KINDS",
    "SYNTHETIC_MARKERS",
    "VIEW_CHOICES",
    "SourceTable",
    "detect_source",
    "load_source",
]

log = logging.getLogger(__name__)

# Files the synthetic generator leaves next to the data; any one marks a directory as synthetic.
SYNTHETIC_MARKERS: tuple[str, ...] = ("synthetic.json", "SYNTHETIC", ".synthetic", "synthetic_config.json")
_SCAN_LIMIT = 5000


def is_synthetic(root: Path) -> bool:
    """True when ``root`` (or its CheXpert CSV folder) carries a synthetic-generator marker file."""
    dirs = [root, *(p for p in root.glob("CheXpert*") if p.is_dir())]
    return any((d / m).exists() for d in dirs for m in SYNTHETIC_MARKERS)


def _layout(root: Path) -> str | None:
    from cxr_tools.data.sources.chexpert import find_csv_dir
    from cxr_tools.data.sources.nih import find_csv

    if find_csv(root) is not None:
        return "nih"
    csv_dir = find_csv_dir(root)
    if csv_dir is not None:
        return "chexpert"
    return None


def _scan_files(root: Path) -> str | None:
    """``dicom`` or ``folder`` from the first files under ``root``; None when neither fits."""
    import os

    from cxr_tools.data.decoding.imaging import DICOM_EXTENSIONS, IMAGE_EXTENSIONS
    from cxr_tools.data.sources.dicom import is_dicom_candidate

    raster = dicom = in_subfolder = 0
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if is_hidden(name):
                continue
            seen += 1
            ext = os.path.splitext(name)[1].lower()
            path = Path(dirpath) / name
            if ext in DICOM_EXTENSIONS or (ext not in IMAGE_EXTENSIONS and dicom < 50 and is_dicom_candidate(path)):
                dicom += 1
            elif ext in IMAGE_EXTENSIONS:
                raster += 1
                in_subfolder += Path(dirpath) != root
        if seen >= _SCAN_LIMIT:
            break
    if dicom and not raster:
        return "dicom"
    if in_subfolder:
        return "folder"
    return None


def detect_source(root: str | Path) -> str:
    """The source kind of a dataset directory: nih, chexpert, synthetic, dicom or folder.

    Raises:
        InputError: ``root`` is not a directory.
        DataError: nothing matched; the message lists what was looked for.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"Dataset directory {root} does not exist or is not a directory.", "Check the path.")
    layout = _layout(root)
    if layout is not None:
        return "synthetic" if is_synthetic(root) else layout
    found = _scan_files(root)
    if found is not None:
        return found
    raise DataError(
        f"Cannot tell what dataset {root} holds. Looked for: Data_Entry_2017_v2020.csv or Data_Entry_2017.csv (NIH), "
        "train.csv / valid.csv here or in CheXpert-v1.0*/ (CheXpert), *.dcm / *.dicom or DICM files (DICOM), "
        "class sub-folders with png/jpg/bmp/tif images (folder).",
        f"Pass the source kind explicitly (one of {', '.join(SOURCE_KINDS)}) or point at the dataset's top folder.",
    )


def load_source(
    root: str | Path,
    kind: str = "auto",
    *,
    views: str | tuple[str, ...] = "frontal",
    metadata: str | Path | None = None,
    folder_labels: bool = False,
) -> SourceTable:
    """Read a dataset directory into a :class:`SourceTable` (no image is opened).

    Args:
        root: the dataset directory.
        kind: ``auto`` (see :func:`detect_source`) or one of :data:`SOURCE_KINDS`.
        views: ``frontal`` (default; unknown views count as frontal), ``lateral``, ``all``, or view codes such
            as ``PA`` / ``AP``; a tuple ORs several.
        metadata: explicit metadata CSV: the NIH ``Data_Entry`` CSV, one CheXpert CSV, or the labels CSV of a
            DICOM folder (key column ``path`` or ``SOPInstanceUID``). Not used by ``folder``.
        folder_labels: DICOM only: take the class from the first-level sub-folder name.

    Raises:
        ConfigError: unknown kind, or an option the kind does not take.
        DataError: missing/misspelled columns, unknown labels, no images; messages name file and column.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"Dataset directory {root} does not exist or is not a directory.", "Check the path.")
    if kind not in ("auto", *SOURCE_KINDS):
        raise ConfigError(f"Unknown source kind {kind!r}.", f"Use auto or one of: {', '.join(SOURCE_KINDS)}.")
    resolved = detect_source(root) if kind == "auto" else kind
    meta = Path(metadata) if metadata is not None else None
    if meta is not None and not meta.is_file():
        raise InputError(f"Metadata file {meta} does not exist.", "Check the --metadata path.")
    if folder_labels and resolved != "dicom":
        raise ConfigError("Folder labels apply to DICOM sources only; folder sources always use them.")

    if resolved == "synthetic":
        layout = "nih" if meta is not None and meta.name.startswith("Data_Entry") else _layout(root)
        if layout is None:
            raise DataError(
                f"{root} has no NIH (Data_Entry_2017_v2020.csv) or CheXpert (train.csv) layout.",
                "Write it with `cxr download synthetic --dest DIR` and point at DIR.",
            )
        resolved_reader = layout
    else:
        resolved_reader = resolved

    if resolved_reader == "nih":
        from cxr_tools.data.sources.nih import read_nih

        src = read_nih(root, metadata=meta, views=views, kind=resolved)
    elif resolved_reader == "chexpert":
        from cxr_tools.data.sources.chexpert import read_chexpert

        src = read_chexpert(root, metadata=meta, views=views, kind=resolved)
    elif resolved_reader == "folder":
        if meta is not None:
            raise ConfigError("Folder sources take their labels from the sub-folder names; --metadata is not used.")
        from cxr_tools.data.sources.folder import read_folder

        src = read_folder(root, views=views, kind=resolved)
    else:
        from cxr_tools.data.sources.dicom import read_dicom

        src = read_dicom(root, metadata=meta, views=views, folder_labels=folder_labels, kind=resolved)
    if len(src.table) == 0:
        shown = views if isinstance(views, str) else ",".join(views)
        raise DataError(
            f"No images of view '{shown}' in the {resolved} source at {root}.",
            "Choose other views (frontal, lateral, all, PA, AP).",
        )
    log.info(
        "%s source %s: %d images, %d labels, %d problems", resolved, root, len(src), len(src.labels), len(src.problems)
    )
    return src
