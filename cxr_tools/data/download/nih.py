"""NIH ChestX-ray14 from the 12 official archives (``images_001.tar.gz`` … ``images_012.tar.gz``).

Each part is one unit of work: download (resumable, MD5-verified, see :mod:`.http`), extract safely into ``DEST``
(the archives hold ``images/NNNNNNNN_NNN.png``, so every part fills the same flat ``DEST/images/``), write the
marker ``DEST/.cxr-download/images_NNN.tar.gz.done`` listing the files, and delete the archive unless
``keep_archives``. A rerun skips a part whose marker is present and whose files are all still there, without
touching the network; a kept, verified archive (``DEST/archives/NAME`` + ``NAME.verified``) is re-extracted
without downloading. One failing part does not stop the others; the result counts the failures.

The ids and MD5s are those NIH publishes (collected from public copies of its download script and FAQ); a
mismatch is reported as "archive corrupt or changed upstream". ``checksums`` overrides them per file name, for a
mirror that repackaged the archives and for tests.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cxr_tools import paths
from cxr_tools.data.download import archives
from cxr_tools.data.download.http import RetryPolicy, fetch
from cxr_tools.data.download.metadata import fetch_metadata
from cxr_tools.data.download.state import (
    DiskSummary,
    PartReport,
    inventory,
    read_marker,
    retry_policy,
    state_dir,
    write_marker,
)
from cxr_tools.errors import ConfigError, CxrError
from cxr_tools.runtime.progress import Progress, null_progress

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://nihcc.box.com/shared/static/{id}.gz"

# part number -> (box.com id, MD5 published by NIH)
ARCHIVES: dict[int, tuple[str, str]] = {
    1: ("vfk49d74nhbxq3nqjg0900w5nvkorp5c", "fe8ed0a6961412fddcbb3603c11b3698"),
    2: ("i28rlmbvmfjbl8p2n3ril0pptcmcu9d1", "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
    3: ("f1t00wrtdk94satdfb9olcolqx20z2jp", "2301d03bde4c246388bad3876965d574"),
    4: ("0aowwzs5lhjrceb3qp67ahp0rd1l1etg", "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
    5: ("v5e3goj22zr6h8tzualxfsqlqaygfbsn", "1861f3cd0ef7734df8104f2b0309023b"),
    6: ("asi7ikud9jwnkrnkj99jnpfkjdes7l6l", "456b53a8b351afd92a35bc41444c58c8"),
    7: ("jn1b4mw4n6lnh74ovmcjb8y48h8xj07n", "1075121ea20a137b87f290d6a4a5965e"),
    8: ("tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j", "b61f34cec3aa69f295fbb593cbd9d443"),
    9: ("upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj", "442a3caa61ae9b64e61c561294d1e183"),
    10: ("l6nilvfa9cg3s28tqv1qc1olm3gnz54p", "09ec81c4c31e32858ad8cf965c494b74"),
    11: ("hhq8fkdgvcari67vfhs7ppg2w6ni4jze", "499aefc67207a5a97692424cf5dbeed5"),
    12: ("ioqwiy20ihqwyr8pf4c24eazhh281pbu", "dc9fda1757c2de0032b63347a7d2895c"),
}


def archive_name(part: int) -> str:
    """``3`` → ``images_003.tar.gz``."""
    return f"images_{part:03d}.tar.gz"


@dataclass(frozen=True)
class NihConfig:
    """``cxr download nih``.

    ``parts`` is a tuple of part numbers or a string like ``"1,3-5"`` (empty = all 12). ``base_url`` is a mirror:
    either a prefix (``BASE/images_001.tar.gz``) or a template with ``{name}``, ``{id}`` and/or ``{part}``
    (``{part}`` is zero-padded, ``001``). ``checksums`` maps file names to MD5s and overrides the official ones.
    """

    dest: Path | None = None
    parts: tuple[int, ...] | str = ()
    base_url: str | None = None
    metadata: tuple[str, ...] = ()
    keep_archives: bool = False
    overwrite: bool = False
    retries: int = 5
    timeout: float = 60.0
    backoff: float = 2.0
    backoff_max: float = 120.0
    retry_seed: int = 0
    checksums: Mapping[str, str] | None = None


@dataclass(frozen=True)
class NihResult:
    """Per-part and per-metadata-file outcomes, and what is on disk at the end."""

    dest: Path
    parts: tuple[PartReport, ...]
    metadata: tuple[PartReport, ...]
    disk: DiskSummary
    failed: int


def parse_parts(value: str | int | tuple[int, ...] | list[int] | None) -> tuple[int, ...]:
    """``"1,3-5"`` → ``(1, 3, 4, 5)``; empty or ``"all"`` → all 12; sorted, without duplicates.

    Raises:
        ConfigError: syntax errors, reversed ranges, numbers outside 1–12.
    """
    if value is None or value == "" or value == () or value == []:
        return tuple(ARCHIVES)
    if isinstance(value, int):
        items: list[str] = [str(value)]
    elif isinstance(value, str):
        if value.strip().lower() == "all":
            return tuple(ARCHIVES)
        items = [p.strip() for p in value.split(",")]
    else:
        items = [str(v) for v in value]
    chosen: set[int] = set()
    for item in items:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
        if not m:
            raise ConfigError(f"Bad part {item!r} in --parts {value!r}.", "Use numbers and ranges, e.g. 1,3-5.")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if lo > hi:
            raise ConfigError(f"Reversed range {item!r} in --parts.", f"Write it as {hi}-{lo}.")
        if lo < 1 or hi > len(ARCHIVES):
            raise ConfigError(f"Part {item!r} is out of range.", f"NIH has parts 1 to {len(ARCHIVES)}.")
        chosen.update(range(lo, hi + 1))
    return tuple(sorted(chosen))


def archive_url(part: int, base_url: str | None) -> str:
    """The URL of one part: official box.com link, ``BASE/NAME``, or a filled-in template."""
    archive_id = ARCHIVES[part][0]
    if not base_url:
        return OFFICIAL_URL.format(id=archive_id)
    if "{" in base_url:
        try:
            return base_url.format(name=archive_name(part), id=archive_id, part=f"{part:03d}")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"Bad --base-url template {base_url!r} ({exc}).", "Use the fields {name}, {id} and {part}."
            ) from None
    return base_url.rstrip("/") + "/" + archive_name(part)


def download_nih(config: NihConfig, progress: Progress | None = None) -> NihResult:
    """Download, verify and extract the chosen NIH parts and metadata into ``config.dest``."""
    progress = null_progress(progress)
    dest = paths.resolve(config.dest, paths.data_root(), "nih")
    dest.mkdir(parents=True, exist_ok=True)
    parts = parse_parts(config.parts)
    for part in parts:  # fail on a bad template before any download starts
        archive_url(part, config.base_url)
    checksums = {archive_name(p): md5 for p, (_, md5) in ARCHIVES.items()}
    checksums.update({k: v.lower() for k, v in (config.checksums or {}).items()})
    policy = retry_policy(config)
    reports: list[PartReport] = []
    with progress.task("NIH parts", total=len(parts)) as overall:
        for part in parts:
            t0 = time.perf_counter()
            name = archive_name(part)
            try:
                report = _one_part(part, dest, config, checksums[name], policy, progress)
            except CxrError as exc:
                log.error("%s failed: %s", name, exc)
                report = PartReport(name, "failed", seconds=time.perf_counter() - t0, detail=str(exc))
            reports.append(report)
            overall.advance()
    archives_dir = dest / "archives"
    if archives_dir.is_dir() and not any(archives_dir.iterdir()):
        archives_dir.rmdir()
    meta = fetch_metadata(config.metadata, dest, policy=policy, overwrite=config.overwrite, progress=progress)
    failed = sum(r.failed for r in reports) + sum(r.failed for r in meta)
    return NihResult(dest, tuple(reports), meta, inventory(dest), failed)


def _one_part(
    part: int, dest: Path, config: NihConfig, md5: str, policy: RetryPolicy, progress: Progress
) -> PartReport:
    t0 = time.perf_counter()
    name = archive_name(part)
    done_marker = state_dir(dest) / f"{name}.done"
    archive = dest / "archives" / name
    verified_marker = archive.with_name(name + ".verified")
    if config.overwrite:
        for stale in (done_marker, verified_marker, archive, archive.with_name(name + ".part")):
            stale.unlink(missing_ok=True)
    done = read_marker(done_marker)
    if done is not None and done.get("md5") == md5:
        missing = list(archives.iter_missing(dest, done.get("files", [])))
        if not missing:
            return PartReport(name, "skipped", len(done["files"]), done.get("bytes", 0), md5, detail="complete")
        log.warning("%s: %d extracted file(s) are missing (e.g. %s); installing again.", name, len(missing), missing[0])
    status = "extracted"
    verified = read_marker(verified_marker)
    if not (
        verified is not None
        and verified.get("md5") == md5
        and archive.is_file()
        and archive.stat().st_size == verified.get("size")
    ):
        verified_marker.unlink(missing_ok=True)
        got = fetch(archive_url(part, config.base_url), archive, md5=md5, policy=policy, progress=progress)
        write_marker(verified_marker, {"name": name, "md5": got.md5, "size": got.size})
        status = "downloaded"
    size = archive.stat().st_size
    extracted = archives.extract(archive, dest, progress=progress, description=f"extract {name}")
    write_marker(done_marker, {"name": name, "md5": md5, "bytes": size, "files": list(extracted.files)})
    if not config.keep_archives:
        archive.unlink(missing_ok=True)
        verified_marker.unlink(missing_ok=True)
    return PartReport(name, status, len(extracted.files), size, md5, seconds=time.perf_counter() - t0)
