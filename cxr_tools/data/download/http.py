"""Resumable, verified HTTP downloads.

One function, :func:`fetch`, streams a URL into ``TARGET.part``, resuming an existing ``.part`` with an HTTP
``Range`` request, retrying transient failures (connection errors, timeouts, a body cut short, HTTP 408/429/5xx)
with exponential backoff and seeded jitter, hashing the bytes with MD5 while they stream, and renaming the file to
``TARGET`` only once it is complete and matches its checksum. A mismatch deletes the file, downloads it once more
from scratch, and then fails with "archive corrupt or changed upstream": nothing corrupt is ever given its final
name. A server's ``Retry-After`` (seconds or an HTTP date, on 429 / 503) sets the wait before the next try,
capped at ``RetryPolicy.backoff_max``. A local write error (disk full, permission, read-only file system) is not
the network's fault: it is reported as such at once, never retried.

Built on :mod:`urllib.request` rather than ``requests``: the standard library already gives everything needed here
(``Range`` headers kept across redirects, per-socket timeouts, streaming reads, ``http_proxy``/``no_proxy``), and
``requests`` is not a declared dependency of cxr-tools (it only arrives through kagglehub).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cxr_tools import __version__
from cxr_tools.errors import DownloadError
from cxr_tools.runtime.progress import Progress, Task, null_progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts, backoff and timeouts.

    The wait before retry ``k`` (1-based) is ``min(backoff_max, backoff * 2**(k-1))`` scaled by a jitter factor in
    [0.5, 1.5) drawn from a generator seeded with ``seed`` (so runs are reproducible and clients that failed
    together do not retry in lock-step). ``max_seconds`` bounds the whole retry loop of one file.
    """

    retries: int = 5
    timeout: float = 60.0
    backoff: float = 2.0
    backoff_max: float = 120.0
    seed: int = 0
    max_seconds: float | None = None

    def delays(self) -> list[float]:
        """The successive waits (seconds) before retries 1..``retries``."""
        import numpy as np

        rng = np.random.default_rng(self.seed)
        return [min(self.backoff_max, self.backoff * 2.0**k) * float(0.5 + rng.random()) for k in range(self.retries)]


@dataclass(frozen=True)
class FetchResult:
    """A verified file on disk."""

    path: Path
    size: int
    md5: str
    attempts: int
    resumed: bool


class _Bar:
    """A progress task that can also be moved back (a restarted download) by setting its absolute value."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.value = 0

    def set(self, value: int) -> None:
        if value != self.value:
            self.task.advance(value - self.value)
            self.value = value

    def add(self, n: int) -> None:
        self.set(self.value + n)


class _Transient(Exception):
    """A failure worth retrying (the partial file is kept for resume); ``retry_after``: the server's wait."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _local_error(exc: OSError, path: Path) -> DownloadError:
    """A failed write of our own file, told apart from a network failure (it is not retried)."""
    hints = {
        errno.ENOSPC: "Free disk space (or choose another -o on a larger disk); rerun to resume.",
        errno.EDQUOT: "Your disk quota is full: free space or choose another -o; rerun to resume.",
        errno.EACCES: "Choose an -o directory you can write to.",
        errno.EPERM: "Choose an -o directory you can write to.",
        errno.EROFS: "The file system is read-only: choose another -o.",
    }
    return DownloadError(
        f"Cannot write {path}: {exc.strerror or exc} (a local disk problem, not the network).",
        hints.get(exc.errno or 0, "Check the -o path (it must be a writable directory)."),
    )


def display_url(url: str) -> str:
    """``url`` without its query string and fragment, so signed tokens never reach logs or error messages."""
    parts = urllib.parse.urlsplit(url)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")


def md5_file(path: Path, limit: int | None = None) -> hashlib._Hash:
    """An MD5 object fed with the first ``limit`` bytes (all when None) of ``path``."""
    h = hashlib.md5(usedforsecurity=False)
    remaining = limit
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            block = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h


def fetch(
    url: str,
    target: str | os.PathLike[str],
    *,
    md5: str | None = None,
    policy: RetryPolicy | None = None,
    progress: Progress | None = None,
    description: str | None = None,
) -> FetchResult:
    """Download ``url`` to ``target`` with resume, retries and MD5 verification.

    Args:
        url: http(s) address; redirects are followed and the ``Range`` header goes with them.
        target: final path; ``target.part`` holds the bytes while downloading and survives interruptions.
        md5: expected hex digest, or None to skip verification (the digest is still computed and returned).
        policy: retries, timeouts and backoff.
        progress: receives one task (bytes) per file.
        description: the progress task's name (default: the file name).

    Raises:
        DownloadError: retries exhausted, a permanent HTTP error (404, 403...), or a checksum mismatch twice.
    """
    policy = policy or RetryPolicy()
    progress = null_progress(progress)
    target = Path(target)
    part = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _local_error(exc, target.parent) from None
    label = description or target.name
    expected = md5.lower() if md5 else None
    with progress.task(label, total=None) as task:
        bar = _Bar(task)
        for round_ in range(2):
            size, digest, attempts, resumed = _download(url, part, policy, bar)
            if expected is None or digest == expected:
                try:
                    with open(part, "rb") as fh:
                        os.fsync(fh.fileno())
                    os.replace(part, target)
                except OSError as exc:
                    raise _local_error(exc, target) from None
                return FetchResult(target, size, digest, attempts, resumed)
            part.unlink(missing_ok=True)
            bar.set(0)
            log.warning(
                "%s: MD5 %s does not match the expected %s (%s); the file was deleted%s.",
                target.name,
                digest,
                expected,
                display_url(url),
                ", downloading it again" if round_ == 0 else "",
            )
    raise DownloadError(
        f"{target.name}: MD5 {digest} does not match the expected {expected} after two downloads from "
        f"{display_url(url)}: archive corrupt or changed upstream. The bad file was deleted.",
        "Try another mirror (--base-url), or if the upstream file really changed, report it.",
    )


def _download(url: str, part: Path, policy: RetryPolicy, bar: _Bar) -> tuple[int, str, int, bool]:
    """Retry loop around :func:`_attempt`; returns (size, md5, attempts, resumed).

    ``policy.retries`` bounds the failures *in a row without progress*: an attempt that added bytes to the
    ``.part`` resets the count, so a multi-GB archive on a flaky link keeps resuming as long as it advances.
    """
    delays = policy.delays()
    start = time.monotonic()
    attempt = failures = 0
    resumed = False
    while True:
        attempt += 1
        offset = part.stat().st_size if part.exists() else 0
        resumed = resumed or offset > 0
        bar.set(offset)
        try:
            size, digest = _attempt(url, part, offset, policy.timeout, bar)
            return size, digest, attempt, resumed
        except _Transient as exc:
            on_disk = part.stat().st_size if part.exists() else 0
            failures = 1 if on_disk > offset else failures + 1
            if failures > policy.retries:
                raise DownloadError(
                    f"Download of {display_url(url)} failed {failures} times in a row: {exc}.",
                    f"Check the network and rerun the same command: it resumes from the {on_disk} bytes already "
                    "on disk.",
                ) from None
            delay = delays[failures - 1]
            if exc.retry_after is not None:
                delay = min(exc.retry_after, policy.backoff_max)
                log.info(
                    "%s: the server asks to retry after %.0f s%s.",
                    display_url(url),
                    exc.retry_after,
                    f"; waiting {delay:.0f} s (the cap)" if delay < exc.retry_after else "",
                )
            if policy.max_seconds is not None and time.monotonic() - start + delay > policy.max_seconds:
                raise DownloadError(
                    f"Download of {display_url(url)} still failing after {time.monotonic() - start:.0f} s "
                    f"(limit {policy.max_seconds:g} s): {exc}.",
                    "Rerun the same command later: it resumes where it stopped.",
                ) from None
            log.warning("%s: %s; retry %d/%d in %.1f s", display_url(url), exc, failures, policy.retries, delay)
            time.sleep(delay)


def _attempt(url: str, part: Path, offset: int, timeout: float, bar: _Bar) -> tuple[int, str]:
    headers = {"User-Agent": f"cxr-tools/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            total = _content_range_total(exc.headers.get("Content-Range", ""))
            if total == offset:  # the .part already holds the whole file
                return offset, md5_file(part).hexdigest()
            part.unlink(missing_ok=True)
            raise _Transient("the server refused to resume (HTTP 416); starting again from scratch") from None
        if exc.code in RETRY_STATUS:
            wait = retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None)
            raise _Transient(f"HTTP {exc.code} {exc.reason}", retry_after=wait) from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {display_url(url)}.", _hint_for(exc.code)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(f"cannot connect ({reason})") from None
    with response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if offset and status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"the server resumed at byte {start}, not {offset}; starting again")
            hasher = md5_file(part, offset)
            mode = "ab"
        else:  # 200: a fresh download, or a server that ignores Range
            offset = 0
            hasher = hashlib.md5(usedforsecurity=False)
            mode = "wb"
        bar.set(offset)
        if length is not None:
            bar.task.set_total(offset + length)
        received = 0
        try:  # our side: open / write / flush errors are local, reported at once
            with open(part, mode) as fh:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (TimeoutError, OSError, http.client.HTTPException) as exc:
                        raise _Transient(f"connection lost after {offset + received} bytes ({exc})") from None
                    if not block:
                        break
                    fh.write(block)
                    hasher.update(block)
                    received += len(block)
                    bar.add(len(block))
        except OSError as exc:
            raise _local_error(exc, part) from None
        if length is not None and received < length:
            raise _Transient(f"connection closed after {offset + received} of {offset + length} bytes")
    return offset + received, hasher.hexdigest()


def _content_range_start(value: str) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value)
    return int(m.group(1)) if m else None


def _content_range_total(value: str) -> int | None:
    m = re.match(r"\s*bytes\s+[\d*-]+/(\d+)", value)
    return int(m.group(1)) if m else None


def _hint_for(code: int) -> str:
    if code == 404:
        return "The file is not at this address: check the URL or --base-url."
    if code in (401, 403):
        return "Access denied: signed links expire (request a new one) and some hosts need credentials."
    return "Check the URL; rerun later if the server is having trouble."
