"""NIH ChestX-ray14 from its Kaggle mirror (``nih-chest-xrays/data``) through kagglehub.

kagglehub downloads into its own cache (``$KAGGLEHUB_CACHE``, default ``~/.cache/kagglehub``); the files are then
hard-linked into ``--dest`` (no second copy on the same file system), or symlinked / copied when asked or when
hard links are impossible. Kaggle credentials are checked *before* kagglehub is imported, so a missing token is one
clear line instead of a network round trip and a traceback. ``--from DIR`` installs a mirror that was downloaded
elsewhere (e.g. on a login node with internet) the same way.

Layout of the mirror: ``images_001/images/*.png`` … ``images_012/images/*.png``, ``Data_Entry_2017.csv``,
``train_val_list.txt``, ``test_list.txt``, ``BBox_List_2017.csv``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cxr_tools import paths
from cxr_tools.data.download.state import DiskSummary, PartReport, inventory, state_dir, write_marker
from cxr_tools.errors import ConfigError, DependencyError, DownloadError, InputError
from cxr_tools.runtime.progress import Progress, null_progress

log = logging.getLogger(__name__)

HANDLE = "nih-chest-xrays/data"
LINK_MODES = ("hardlink", "symlink", "copy")
EXPECTED = ("Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt")
NO_CREDENTIALS = (
    "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or save the token "
    "file kaggle.json from https://www.kaggle.com/settings (API → Create New Token) in ~/.kaggle/ "
    "(or in $KAGGLE_CONFIG_DIR)."
)


@dataclass(frozen=True)
class KaggleConfig:
    """``cxr download kaggle``: where to put the mirror and how to get it."""

    dest: Path | None = None
    handle: str = HANDLE
    from_dir: Path | None = None
    link: str = "hardlink"
    overwrite: bool = False


@dataclass(frozen=True)
class KaggleResult:
    """What was installed and what is on disk."""

    dest: Path
    source: Path
    handle: str
    files: PartReport
    metadata: tuple[str, ...]
    missing: tuple[str, ...]
    disk: DiskSummary


def credentials_problem() -> str | None:
    """None when Kaggle credentials are configured (the places kagglehub looks), else what to do."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return None
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return None
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle").expanduser()
    token = folder / "kaggle.json"
    if token.is_file():
        try:
            data = json.loads(token.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"The Kaggle token file {token} is not valid JSON. Download a new one from your Kaggle settings."
        if not (isinstance(data, dict) and data.get("username") and data.get("key")):
            return f"The Kaggle token file {token} lacks 'username' or 'key'. Download a new one."
        return None
    if any((Path.home() / ".kaggle" / n).is_file() for n in ("access_token", "access_token.txt")):
        return None
    return NO_CREDENTIALS


def kagglehub_download(handle: str, path: str | None = None) -> Path:
    """``kagglehub.dataset_download(handle, path)`` with credentials checked first and errors made clear."""
    problem = credentials_problem()
    if problem:
        raise DownloadError(problem, "Or download the mirror elsewhere and pass --from DIR.")
    try:
        import kagglehub
    except ImportError as exc:
        raise DependencyError("kagglehub is not installed.", "Install it with: pip install kagglehub") from exc
    try:
        return Path(kagglehub.dataset_download(handle, path=path) if path else kagglehub.dataset_download(handle))
    except Exception as exc:  # kagglehub raises its own classes, requests' and ValueError; all end here
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        lowered = text.lower()
        if any(w in lowered for w in ("401", "403", "unauthenticated", "credential", "unauthorized")):
            raise DownloadError(f"Kaggle refused the download of {handle}: {text}.", NO_CREDENTIALS) from None
        raise DownloadError(
            f"kagglehub could not download {handle}{'/' + path if path else ''}: {text}.",
            "Check the network and the dataset handle, then rerun (kagglehub resumes from its cache).",
        ) from None


def download_kaggle(config: KaggleConfig, progress: Progress | None = None) -> KaggleResult:
    """Fetch (or take from ``from_dir``) the Kaggle mirror and install it into ``dest``."""
    progress = null_progress(progress)
    if config.link not in LINK_MODES:
        raise ConfigError(f"Unknown link mode {config.link!r}.", f"Use one of {', '.join(LINK_MODES)}.")
    dest = paths.resolve(config.dest, paths.data_root(), "nih-kaggle")
    if config.from_dir is not None:
        source = Path(config.from_dir).expanduser()
        if not source.is_dir():
            raise InputError(f"--from {source} is not a directory.", "Point it at the unpacked Kaggle mirror.")
    else:
        source = kagglehub_download(config.handle)
    if source.resolve() == dest.resolve():
        raise ConfigError(f"The destination {dest} is the source itself.", "Choose another --dest.")
    t0 = time.perf_counter()
    linked, skipped, size = install_tree(source, dest, config.link, config.overwrite, progress)
    report = PartReport(
        name=config.handle,
        status="skipped" if linked == 0 and skipped else ("copied" if config.link == "copy" else "downloaded"),
        files=linked + skipped,
        bytes=size,
        seconds=time.perf_counter() - t0,
        detail=f"{linked} new, {skipped} already present",
    )
    write_marker(
        state_dir(dest) / "kaggle.done",
        {"handle": config.handle, "source": str(source), "files": linked + skipped, "bytes": size},
    )
    disk = inventory(dest)
    metadata = tuple(n for n in EXPECTED if (dest / n).is_file())
    missing = tuple(n for n in EXPECTED if not (dest / n).is_file())
    if disk.n_images == 0:
        missing = (*missing, "images")
    return KaggleResult(dest, source, config.handle, report, metadata, missing, disk)


def install_tree(source: Path, dest: Path, link: str, overwrite: bool, progress: Progress) -> tuple[int, int, int]:
    """Link or copy every file of ``source`` into ``dest``; returns (new files, files already there, bytes).

    A file already in ``dest`` with the same size is kept (unless ``overwrite``); each new file appears under
    its final name atomically (linked or copied to a temporary name, then renamed).
    """
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    new = kept = size = 0
    with progress.task(f"install {source.name}", total=len(files)) as task:
        for src in files:
            rel = src.relative_to(source)
            out = dest / rel
            src_size = src.stat().st_size
            size += src_size
            if out.is_file() and not overwrite and out.stat().st_size == src_size:
                kept += 1
                task.advance()
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            _link_or_copy(src, tmp, link)
            os.replace(tmp, out)
            new += 1
            task.advance()
    return new, kept, size


def _link_or_copy(src: Path, tmp: Path, link: str) -> None:
    if link == "hardlink":
        try:
            os.link(src, tmp)
            return
        except OSError:  # another file system, or links not allowed: fall back to a copy
            pass
    elif link == "symlink":
        os.symlink(src.resolve(), tmp)
        return
    shutil.copy2(src, tmp)
