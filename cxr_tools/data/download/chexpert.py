"""CheXpert from the archive a registered user receives (a signed URL, or the file already downloaded).

Stanford hands out a time-limited signed link after registration; there is no public URL and no published
checksum (pass ``md5`` when you have one). The archive (zip or tar, detected from its bytes) is extracted safely
into ``DEST`` and must contain ``train.csv`` and ``valid.csv`` side by side with a ``Path`` column, e.g.
``CheXpert-v1.0-small/train.csv``; otherwise nothing is installed and the error says what was found. A rerun after
success is skipped from the marker ``DEST/.cxr-download/chexpert.done`` without touching the network. A downloaded
archive is deleted after extraction unless ``keep_archives``; a local ``--from FILE`` is never touched.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cxr_tools import paths
from cxr_tools.data.download import archives
from cxr_tools.data.download.http import display_url, fetch, md5_file
from cxr_tools.data.download.state import (
    DiskSummary,
    PartReport,
    inventory,
    read_marker,
    retry_policy,
    state_dir,
    write_marker,
)
from cxr_tools.errors import ConfigError, InputError
from cxr_tools.runtime.progress import Progress, null_progress

REQUIRED = ("train.csv", "valid.csv")


@dataclass(frozen=True)
class ChexpertConfig:
    """``cxr download chexpert --from URL|FILE``."""

    source: str = ""
    dest: Path | None = None
    md5: str | None = None
    keep_archives: bool = False
    overwrite: bool = False
    retries: int = 5
    timeout: float = 60.0
    backoff: float = 2.0
    backoff_max: float = 120.0
    retry_seed: int = 0


@dataclass(frozen=True)
class ChexpertResult:
    """The installed dataset: where its CSVs are, how many rows they have, what is on disk."""

    dest: Path
    root: Path
    archive: PartReport
    train_rows: int
    valid_rows: int
    disk: DiskSummary


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def find_root(files: tuple[str, ...] | list[str]) -> str | None:
    """The directory (relative, POSIX, ``""`` for the top) holding both ``train.csv`` and ``valid.csv``."""
    dirs: dict[str, set[str]] = {}
    for rel in files:
        p = PurePosixPath(rel)
        dirs.setdefault(p.parent.as_posix() if p.parent.as_posix() != "." else "", set()).add(p.name)
    roots = sorted((d for d, names in dirs.items() if set(REQUIRED) <= names), key=lambda d: (d.count("/"), d))
    return roots[0] if roots else None


def _check(root: Path, files: tuple[str, ...], shown: str) -> None:
    found = find_root(files)
    if found is None:
        csvs = [f for f in files if f.lower().endswith(".csv")][:5]
        raise InputError(
            f"{shown} is not a CheXpert archive: train.csv and valid.csv not found side by side "
            f"({len(files)} files; CSVs: {', '.join(csvs) or 'none'}). Nothing was installed.",
            "Use the CheXpert-v1.0(-small) archive from Stanford's download e-mail.",
        )
    for name in REQUIRED:
        header = (root / found / name).open(encoding="utf-8-sig").readline()
        if "Path" not in header.split(","):
            raise InputError(
                f"{shown}: {found + '/' if found else ''}{name} has no 'Path' column (header {header[:60]!r}).",
                "Use the CheXpert CSVs as distributed.",
            )


def _rows(path: Path) -> int:
    with path.open(encoding="utf-8-sig") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


def download_chexpert(config: ChexpertConfig, progress: Progress | None = None) -> ChexpertResult:
    """Fetch (when a URL) and install the CheXpert archive into ``config.dest``; see the module docstring."""
    progress = null_progress(progress)
    source = (config.source or "").strip()
    if not source:
        raise ConfigError("No CheXpert source given.", "Pass --from URL (the signed link) or --from FILE.")
    dest = paths.resolve(config.dest, paths.data_root(), "chexpert")
    dest.mkdir(parents=True, exist_ok=True)
    shown = display_url(source) if _is_url(source) else source
    marker = state_dir(dest) / "chexpert.done"
    t0 = time.perf_counter()
    done = read_marker(marker)
    if config.overwrite:
        marker.unlink(missing_ok=True)
    elif done is not None and not list(archives.iter_missing(dest, done.get("files", []))):
        root = dest / done["root"]
        report = PartReport(done["archive"], "skipped", len(done["files"]), done.get("bytes", 0), done.get("md5"))
        return ChexpertResult(dest, root, report, _rows(root / "train.csv"), _rows(root / "valid.csv"), inventory(dest))

    downloaded = _is_url(source)
    md5: str | None = None
    if downloaded:
        name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(source).path)).name or "chexpert-archive"
        archive = dest / "archives" / name
        if config.overwrite:
            archive.unlink(missing_ok=True)
        if archive.is_file():  # a complete earlier download (fetch only gives the final name when complete)
            md5 = md5_file(archive).hexdigest()
            if config.md5 and md5 != config.md5.lower():
                archive.unlink()
        if not archive.is_file():
            md5 = fetch(source, archive, md5=config.md5, policy=retry_policy(config), progress=progress).md5
    else:
        archive = Path(source).expanduser()
        if archive.is_dir():
            raise InputError(
                f"--from {archive} is a directory.",
                "Give the archive file; an extracted CheXpert folder can be passed to cxr preprocess directly.",
            )
        if not archive.is_file():
            raise InputError(f"--from {archive}: no such file, and not an http(s) URL.")
        if config.md5:
            md5 = md5_file(archive).hexdigest()
            if md5 != config.md5.lower():
                raise InputError(f"{archive.name}: MD5 {md5} does not match the given {config.md5}.")
    extracted = archives.extract(
        archive, dest, progress=progress, check=lambda root, files: _check(root, files, archive.name)
    )
    root_rel = find_root(extracted.files) or ""
    size = archive.stat().st_size
    write_marker(
        marker,
        {"archive": archive.name, "md5": md5, "bytes": size, "root": root_rel, "files": list(extracted.files)},
    )
    if downloaded and not config.keep_archives:
        archive.unlink(missing_ok=True)
        if not any(archive.parent.iterdir()):
            archive.parent.rmdir()
    root = dest / root_rel
    report = PartReport(
        archive.name,
        "downloaded" if downloaded else "extracted",
        len(extracted.files),
        size,
        md5,
        seconds=time.perf_counter() - t0,
        detail=shown,
    )
    return ChexpertResult(dest, root, report, _rows(root / "train.csv"), _rows(root / "valid.csv"), inventory(dest))
