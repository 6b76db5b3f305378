"""NIH metadata (``Data_Entry_2017*.csv``) and official split lists, from wherever the user has them.

NIH serves these behind a web page, not at stable URLs, so ``--metadata`` takes any mix of: ``kaggle`` (the three
files from the Kaggle mirror via kagglehub), an http(s) URL, a local file, a local directory holding them, or a
zip/tar of them. Each file is checked before it gets its final name (a CSV must have the ``Image Index``,
``Finding Labels`` and ``Patient ID`` columns, a split list must list ``.png`` names), so a saved HTML error page
is caught here rather than in ``cxr preprocess``.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from cxr_tools.data.download import archives, kaggle
from cxr_tools.data.download.http import RetryPolicy, display_url, fetch
from cxr_tools.data.download.state import PartReport, state_dir
from cxr_tools.errors import CxrError, InputError
from cxr_tools.runtime.progress import Progress

CSV_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
KNOWN_SUFFIXES = (".csv", ".txt")


def fetch_metadata(
    sources: Sequence[str], dest: Path, *, policy: RetryPolicy, overwrite: bool, progress: Progress
) -> tuple[PartReport, ...]:
    """Install every ``--metadata`` source into ``dest``; one report per file, failures reported not raised."""
    reports: list[PartReport] = []
    for source in sources:
        t0 = time.perf_counter()
        try:
            reports.extend(_install_source(source.strip(), dest, policy, overwrite, progress))
        except CxrError as exc:
            shown = display_url(source) if _is_url(source) else source
            reports.append(PartReport(shown, "failed", seconds=time.perf_counter() - t0, detail=str(exc)))
    return tuple(reports)


def validate(path: Path, name: str | None = None) -> int:
    """Check a metadata file by name (``name``, default the file's) and content; returns its number of data rows.

    Raises:
        InputError: a ``Data_Entry*.csv`` without the expected columns, or a ``*_list.txt`` that does not list
            PNG names; the message names the file and what is missing.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Metadata file {name or path.name} cannot be read as text ({exc}).") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    name = name or path.name
    lower = name.lower()
    if lower.startswith("data_entry") and lower.endswith(".csv"):
        header = lines[0] if lines else ""
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"Metadata file {name} lacks the column(s) {', '.join(missing)} (header: {header[:80]!r}).",
                "Is it the NIH Data_Entry_2017 CSV? A saved web page or a renamed file will not do.",
            )
        return len(lines) - 1
    if lower.endswith("_list.txt"):
        bad = next((ln for ln in lines[:20] if not ln.strip().lower().endswith(".png")), None)
        if not lines or bad is not None:
            raise InputError(
                f"Split list {name} should hold one PNG name per line; found {bad or 'nothing'}.",
                "Use NIH's train_val_list.txt / test_list.txt.",
            )
        return len(lines)
    return max(len(lines) - 1, 0) if lower.endswith(".csv") else len(lines)


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def _install_source(
    source: str, dest: Path, policy: RetryPolicy, overwrite: bool, progress: Progress
) -> list[PartReport]:
    if source == "kaggle":
        return [_from_kaggle(name, dest, overwrite) for name in kaggle.EXPECTED]
    if _is_url(source):
        return [_from_url(source, dest, policy, overwrite, progress)]
    path = Path(source).expanduser()
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in KNOWN_SUFFIXES]
        if not found:
            raise InputError(f"--metadata {path} holds no .csv or .txt file.", "Point it at the metadata files.")
        return [_from_file(p, dest, overwrite) for p in found]
    if path.is_file():
        if path.suffix.lower() not in KNOWN_SUFFIXES:
            return _from_archive(path, dest, progress)
        return [_from_file(path, dest, overwrite)]
    raise InputError(f"--metadata {source}: no such file or directory, and not an http(s) URL or 'kaggle'.")


def _existing(target: Path, overwrite: bool) -> PartReport | None:
    if target.is_file() and not overwrite:
        rows = validate(target)
        return PartReport(target.name, "skipped", files=1, bytes=target.stat().st_size, detail=f"{rows} rows")
    return None


def _place(tmp: Path, target: Path, status: str, t0: float) -> PartReport:
    try:
        rows = validate(tmp, target.name)
    except InputError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return PartReport(
        target.name, status, 1, target.stat().st_size, seconds=time.perf_counter() - t0, detail=f"{rows} rows"
    )


def _from_file(path: Path, dest: Path, overwrite: bool) -> PartReport:
    t0 = time.perf_counter()
    target = dest / path.name
    if target.exists() and target.resolve() == path.resolve():
        return PartReport(target.name, "skipped", 1, target.stat().st_size, detail=f"{validate(target)} rows")
    if (done := _existing(target, overwrite)) is not None:
        return done
    tmp = state_dir(dest) / f"{path.name}.tmp"
    shutil.copyfile(path, tmp)
    return _place(tmp, target, "copied", t0)


def _from_url(url: str, dest: Path, policy: RetryPolicy, overwrite: bool, progress: Progress) -> PartReport:
    t0 = time.perf_counter()
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise InputError(f"--metadata {display_url(url)}: the URL names no file.", "Give a URL ending in the file.")
    target = dest / name
    if (done := _existing(target, overwrite)) is not None:
        return done
    tmp = state_dir(dest) / name
    fetch(url, tmp, policy=policy, progress=progress)
    if tmp.suffix.lower() not in KNOWN_SUFFIXES:
        raise InputError(f"--metadata {display_url(url)}: expected a .csv or .txt file.")
    return _place(tmp, target, "downloaded", t0)


def _from_archive(path: Path, dest: Path, progress: Progress) -> list[PartReport]:
    t0 = time.perf_counter()

    def check(root: Path, files: tuple[str, ...]) -> None:
        for rel in files:
            if rel.lower().endswith(KNOWN_SUFFIXES):
                validate(root / rel)

    extracted = archives.extract(path, dest, progress=progress, check=check)
    return [
        PartReport(rel, "extracted", 1, (dest / rel).stat().st_size, seconds=time.perf_counter() - t0)
        for rel in extracted.files
    ]


def _from_kaggle(name: str, dest: Path, overwrite: bool) -> PartReport:
    t0 = time.perf_counter()
    target = dest / name
    if (done := _existing(target, overwrite)) is not None:
        return done
    got = kaggle.kagglehub_download(kaggle.HANDLE, name)
    tmp = state_dir(dest) / f"{name}.tmp"
    shutil.copyfile(got, tmp)
    return _place(tmp, target, "downloaded", t0)
