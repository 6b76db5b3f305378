"""Downloads tell a local write error from a network failure, and honour ``Retry-After``, against the
real loopback HTTP server."""

from __future__ import annotations

import email.utils
import logging
import os
import time

import pytest
from http_server import LoopbackServer, md5

from cxr_tools.data.download.http import RetryPolicy, fetch, retry_after_seconds
from cxr_tools.errors import DownloadError

DATA = os.urandom(200_000)
SLOW = RetryPolicy(retries=3, timeout=5.0, backoff=30.0, backoff_max=60.0)  # its own waits would be >= 15 s


@pytest.fixture
def server():
    with LoopbackServer({"f.bin": DATA}) as srv:
        yield srv


@pytest.fixture
def sleeps(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    return waited


def test_disk_full_is_reported_as_such_and_not_retried(server, tmp_path):
    part = tmp_path / "f.bin.part"
    part.symlink_to("/dev/full")  # a real ENOSPC on every write
    with pytest.raises(DownloadError, match=r"Cannot write .*f\.bin\.part: No space left on device.*not the network"):
        fetch(server.url("f.bin"), tmp_path / "f.bin", policy=SLOW)
    assert len(server.hits_for("f.bin")) == 1  # one request: no retry as if the network had failed
    assert not (tmp_path / "f.bin").exists()


def test_an_output_path_that_cannot_be_a_directory_is_a_local_error(server, tmp_path):
    (tmp_path / "file").write_text("a file, not a directory")
    with pytest.raises(DownloadError, match=r"Cannot write .*file.*not the network") as info:
        fetch(server.url("f.bin"), tmp_path / "file" / "sub" / "f.bin", policy=SLOW)
    assert "-o" in info.value.hint and server.hits_for("f.bin") == []


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_sets_the_wait(server, tmp_path, sleeps, status):
    server.fail["f.bin"] = (status, 1)
    server.retry_after["f.bin"] = "2"
    got = fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=SLOW)
    assert got.attempts == 2 and sleeps == [2.0]


def test_retry_after_http_date_is_honoured_and_a_long_one_capped(server, tmp_path, sleeps, caplog):
    server.fail["f.bin"] = (503, 1)
    server.retry_after["f.bin"] = email.utils.formatdate(time.time() + 3600, usegmt=True)
    with caplog.at_level(logging.INFO, logger="cxr_tools"):
        fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=SLOW)
    assert sleeps == [60.0]  # an hour asked, the policy's cap waited
    assert "retry after 3" in caplog.text and "the cap" in caplog.text


def test_retry_after_parsing():
    now = 1_000_000.0
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
