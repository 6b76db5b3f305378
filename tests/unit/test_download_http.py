"""Resumable, retried, MD5-verified fetches against a real loopback HTTP server."""

from __future__ import annotations

import os

import pytest
from http_server import LoopbackServer, md5

from cxr_tools.data.download.http import RetryPolicy, display_url, fetch
from cxr_tools.errors import DownloadError
from cxr_tools.runtime.progress import RecordingProgress

FAST = RetryPolicy(retries=3, timeout=5.0, backoff=0.01, backoff_max=0.05)
DATA = os.urandom(300_000)


@pytest.fixture
def server():
    with LoopbackServer({"f.bin": DATA}) as srv:
        yield srv


def test_full_download_verifies_md5_and_reports_bytes(server, tmp_path):
    rec = RecordingProgress()
    got = fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA).upper(), policy=FAST, progress=rec)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert got.md5 == md5(DATA) and got.size == len(DATA) and got.attempts == 1 and not got.resumed
    assert not (tmp_path / "f.bin.part").exists()
    assert rec.done("f.bin") == len(DATA)
    assert ("f.bin", "total", len(DATA)) in rec.events


def test_resume_after_cut_sends_range_and_gets_right_bytes(server, tmp_path):
    server.cut_after["f.bin"] = 100_000
    rec = RecordingProgress()
    got = fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST, progress=rec)
    hits = server.hits_for("f.bin")
    assert len(hits) == 2
    assert hits[0].range is None
    start = int(hits[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 100_000 and hits[1].range == f"bytes={start}-"
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert got.resumed and got.attempts == 2
    assert rec.done("f.bin") == len(DATA)  # bytes on disk are not counted twice


def test_resume_of_part_left_by_an_earlier_run(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(DATA[:1234])
    fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST)
    assert [h.range for h in server.hits_for("f.bin")] == ["bytes=1234-"]
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_part_already_complete_gets_416_and_is_accepted(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(DATA)
    fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert len(server.hits_for("f.bin")) == 1


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.range_support = False
    (tmp_path / "f.bin.part").write_bytes(b"\x00" * 5000)  # wrong bytes that must not survive
    fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_md5_mismatch_retries_once_then_fails_and_deletes(server, tmp_path):
    server.corrupt.add("f.bin")
    with pytest.raises(DownloadError, match="archive corrupt or changed upstream"):
        fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST)
    assert len(server.hits_for("f.bin")) == 2
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_transient_errors_are_retried(server, tmp_path):
    server.fail["f.bin"] = (503, 2)
    got = fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST)
    assert got.attempts == 3 and (tmp_path / "f.bin").read_bytes() == DATA


def test_retries_exhausted_says_rerun_resumes(server, tmp_path):
    server.fail["f.bin"] = (503, 10)
    with pytest.raises(DownloadError, match=r"failed 4 times in a row.*resumes"):
        fetch(server.url("f.bin"), tmp_path / "f.bin", policy=FAST)
    assert len(server.hits_for("f.bin")) == 4


def test_permanent_errors_are_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*--base-url"):
        fetch(server.url("missing.bin"), tmp_path / "m.bin", policy=FAST)
    assert len(server.hits_for("missing.bin")) == 1
    server.fail["f.bin"] = (403, 5)
    with pytest.raises(DownloadError, match="signed links expire"):
        fetch(server.url("f.bin") + "?token=SECRET", tmp_path / "f.bin", policy=FAST)


def test_progress_resets_the_retry_budget(server, tmp_path):
    class Cutter(dict):  # cut every response after 50 kB: never more than one failure in a row
        def pop(self, key, default=None):
            return 50_000 if key == "f.bin" else default

    server.cut_after = Cutter()
    got = fetch(server.url("f.bin"), tmp_path / "f.bin", md5=md5(DATA), policy=RetryPolicy(retries=1, backoff=0.001))
    assert got.attempts == 6 and (tmp_path / "f.bin").read_bytes() == DATA
    assert [h.range for h in server.hits_for("f.bin")][1:] == [f"bytes={k * 50_000}-" for k in range(1, 6)]


def test_connection_refused_is_transient_and_bounded(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot connect"):
        fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", policy=RetryPolicy(retries=1, backoff=0.01))


def test_redirect_keeps_range(server, tmp_path):
    server.redirect["short"] = "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA[:10])
    fetch(server.url("short"), tmp_path / "f.bin", md5=md5(DATA), policy=FAST)
    assert [h.range for h in server.hits_for("f.bin")] == ["bytes=10-"]
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_backoff_delays_are_seeded_bounded_and_growing():
    p = RetryPolicy(retries=6, backoff=1.0, backoff_max=8.0, seed=3)
    d = p.delays()
    assert d == RetryPolicy(retries=6, backoff=1.0, backoff_max=8.0, seed=3).delays()
    assert d != RetryPolicy(retries=6, backoff=1.0, backoff_max=8.0, seed=4).delays()
    for k, delay in enumerate(d):
        base = min(8.0, 2.0**k)
        assert 0.5 * base <= delay < 1.5 * base


def test_display_url_hides_signed_query():
    assert display_url("https://h/p/file.zip?sig=SECRET&x=1") == "https://h/p/file.zip?…"
