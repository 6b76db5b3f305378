"""`download_nih` end to end against a loopback mirror with the real archive names."""

from __future__ import annotations

import pytest
from http_server import LoopbackServer, make_tar, md5, nih_part, tiny_png

from cxr_tools.data.download.nih import NihConfig, download_nih
from cxr_tools.runtime.progress import RecordingProgress

DATA_ENTRY = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
    "00001000_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143\n"
)


@pytest.fixture
def mirror():
    parts = {p: nih_part(p) for p in (1, 2, 3)}
    files = {f"nih/images_{p:03d}.tar.gz": data for p, (_, data) in parts.items()}
    files["meta/Data_Entry_2017_v2020.csv"] = DATA_ENTRY.encode()
    files["meta/test_list.txt"] = b"00001000_000.png\n00001001_000.png\n"
    with LoopbackServer(files) as srv:
        srv.parts = parts
        srv.checksums = {f"images_{p:03d}.tar.gz": md5(data) for p, (_, data) in parts.items()}
        yield srv


def _config(mirror, dest, **kw):
    base = {
        "dest": dest,
        "base_url": mirror.url("nih"),
        "checksums": mirror.checksums,
        "backoff": 0.01,
        "backoff_max": 0.02,
        "retries": 3,
        "timeout": 5.0,
    }
    base.update(kw)
    return NihConfig(**base)


def test_download_verify_extract_and_summary(mirror, tmp_path):
    rec = RecordingProgress()
    res = download_nih(_config(mirror, tmp_path / "nih", parts="1,3"), rec)
    assert [(r.name, r.status) for r in res.parts] == [
        ("images_001.tar.gz", "downloaded"),
        ("images_003.tar.gz", "downloaded"),
    ]
    assert res.failed == 0
    for p in (1, 3):
        for name, data in mirror.parts[p][0].items():
            assert (tmp_path / "nih" / name).read_bytes() == data
    assert not (tmp_path / "nih/images/00002000_000.png").exists()
    assert res.disk.n_images == 6
    assert [(e.name, e.files) for e in res.disk.entries] == [("images/", 6)]
    assert not (tmp_path / "nih/archives").exists()  # archives deleted without --keep-archives
    assert rec.done("images_001.tar.gz") == len(mirror.parts[1][1])
    assert rec.done("NIH parts") == 2


def test_rerun_skips_complete_parts_without_network(mirror, tmp_path):
    dest = tmp_path / "nih"
    download_nih(_config(mirror, dest, parts="1-2"), None)
    n = len(mirror.hits)
    res = download_nih(_config(mirror, dest, parts="1-3"), None)
    assert [r.status for r in res.parts] == ["skipped", "skipped", "downloaded"]
    assert len(mirror.hits) == n + 1 and mirror.hits[-1].path == "/nih/images_003.tar.gz"
    # a deleted image makes its part incomplete again
    (dest / "images/00001000_000.png").unlink()
    res = download_nih(_config(mirror, dest, parts="1"), None)
    assert res.parts[0].status == "downloaded"
    assert (dest / "images/00001000_000.png").read_bytes() == tiny_png(100)


def test_kept_archive_is_reextracted_without_network(mirror, tmp_path):
    dest = tmp_path / "nih"
    download_nih(_config(mirror, dest, parts="2", keep_archives=True), None)
    assert (dest / "archives/images_002.tar.gz").read_bytes() == mirror.parts[2][1]
    (dest / ".cxr-download/images_002.tar.gz.done").unlink()  # as if extraction had been interrupted
    n = len(mirror.hits)
    res = download_nih(_config(mirror, dest, parts="2", keep_archives=True), None)
    assert res.parts[0].status == "extracted" and len(mirror.hits) == n
    assert res.disk.n_images == 3
    assert [e.name for e in res.disk.entries] == ["archives/", "images/"]


def test_cut_download_resumes_with_range(mirror, tmp_path):
    data = mirror.parts[1][1]
    mirror.cut_after["nih/images_001.tar.gz"] = len(data) // 2
    res = download_nih(_config(mirror, tmp_path / "nih", parts="1"), None)
    assert res.parts[0].status == "downloaded"
    ranges = [h.range for h in mirror.hits_for("nih/images_001.tar.gz")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert res.disk.n_images == 3


def test_md5_mismatch_fails_that_part_only_and_marks_nothing(mirror, tmp_path):
    dest = tmp_path / "nih"
    mirror.corrupt.add("nih/images_002.tar.gz")
    res = download_nih(_config(mirror, dest, parts="1-3"), None)
    status = {r.name: r for r in res.parts}
    assert status["images_002.tar.gz"].status == "failed"
    assert "archive corrupt or changed upstream" in status["images_002.tar.gz"].detail
    assert status["images_001.tar.gz"].status == status["images_003.tar.gz"].status == "downloaded"
    assert res.failed == 1
    assert not (dest / ".cxr-download/images_002.tar.gz.done").exists()
    assert not (dest / "archives/images_002.tar.gz").exists()
    assert not (dest / "archives/images_002.tar.gz.part").exists()
    assert not (dest / "images/00002000_000.png").exists()
    # upstream fixed: the rerun fetches only the failed part
    mirror.corrupt.clear()
    n = len(mirror.hits)
    res = download_nih(_config(mirror, dest, parts="1-3"), None)
    assert [r.status for r in res.parts] == ["skipped", "downloaded", "skipped"] and len(mirror.hits) == n + 1


def test_official_checksums_apply_without_override(mirror, tmp_path):
    res = download_nih(_config(mirror, tmp_path / "nih", parts="1", checksums=None), None)
    assert res.parts[0].status == "failed" and "fe8ed0a6961412fddcbb3603c11b3698" in res.parts[0].detail


def test_unsafe_member_in_a_part_is_refused(mirror, tmp_path):
    bad = make_tar({"images/00001000_000.png": tiny_png(1), "../escape.png": tiny_png(2)})
    mirror.files["nih/images_001.tar.gz"] = bad
    checks = {**mirror.checksums, "images_001.tar.gz": md5(bad)}
    res = download_nih(_config(mirror, tmp_path / "nih", parts="1", checksums=checks), None)
    assert res.parts[0].status == "failed" and "'../escape.png'" in res.parts[0].detail
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "nih/images").exists()
    assert not (tmp_path / "nih/.cxr-download/images_001.tar.gz.done").exists()


def test_missing_part_on_mirror_is_a_failed_part(mirror, tmp_path):
    res = download_nih(_config(mirror, tmp_path / "nih", parts="3-4"), None)
    assert [r.status for r in res.parts] == ["downloaded", "failed"]
    assert "HTTP 404" in res.parts[1].detail and res.failed == 1


def test_metadata_from_url_file_and_bad_csv(mirror, tmp_path):
    local = tmp_path / "train_val_list.txt"
    local.write_text("00001000_000.png\n")
    bad = tmp_path / "Data_Entry_2017.csv"
    bad.write_text("Image,Labels\na.png,x\n")
    res = download_nih(
        _config(
            mirror,
            tmp_path / "nih",
            parts="1",
            metadata=(
                mirror.url("meta/Data_Entry_2017_v2020.csv"),
                mirror.url("meta/test_list.txt"),
                str(local),
                str(bad),
            ),
        ),
        None,
    )
    meta = {r.name: r for r in res.metadata}
    assert (
        meta["Data_Entry_2017_v2020.csv"].status == "downloaded"
        and meta["Data_Entry_2017_v2020.csv"].detail == "1 rows"
    )
    assert meta["test_list.txt"].detail == "2 rows" and meta["train_val_list.txt"].status == "copied"
    failed = [r for r in res.metadata if r.failed]
    assert len(failed) == 1 and "Image Index" in failed[0].detail and "Data_Entry_2017.csv" in failed[0].detail
    assert res.failed == 1
    assert (tmp_path / "nih/Data_Entry_2017_v2020.csv").read_text() == DATA_ENTRY
    assert not (tmp_path / "nih/Data_Entry_2017.csv").exists()
    n = len(mirror.hits)
    res = download_nih(
        _config(mirror, tmp_path / "nih", parts="1", metadata=(mirror.url("meta/Data_Entry_2017_v2020.csv"),)), None
    )
    assert res.metadata[0].status == "skipped" and len(mirror.hits) == n


def test_metadata_html_page_is_rejected(mirror, tmp_path):
    mirror.files["meta/Data_Entry_2017.csv"] = b"<html><body>Please log in</body></html>"
    res = download_nih(
        _config(mirror, tmp_path / "nih", parts="1", metadata=(mirror.url("meta/Data_Entry_2017.csv"),)), None
    )
    assert res.metadata[0].failed and "Finding Labels" in res.metadata[0].detail
    assert not (tmp_path / "nih/Data_Entry_2017.csv").exists()


def test_metadata_from_a_zip_of_files(mirror, tmp_path):
    from http_server import make_zip

    bundle = tmp_path / "nih-metadata.zip"
    bundle.write_bytes(make_zip({"Data_Entry_2017_v2020.csv": DATA_ENTRY.encode(), "test_list.txt": b"a.png\n"}))
    res = download_nih(_config(mirror, tmp_path / "nih", parts="1", metadata=(str(bundle),)), None)
    assert sorted((r.name, r.status) for r in res.metadata) == [
        ("Data_Entry_2017_v2020.csv", "extracted"),
        ("test_list.txt", "extracted"),
    ]
    assert (tmp_path / "nih/test_list.txt").read_text() == "a.png\n"
    bad = tmp_path / "bad-metadata.zip"
    bad.write_bytes(make_zip({"test_list.txt": b"<html>\n"}))
    res = download_nih(_config(mirror, tmp_path / "nih2", parts="1", metadata=(str(bad),)), None)
    assert res.metadata[0].failed and "PNG name" in res.metadata[0].detail
    assert not (tmp_path / "nih2/test_list.txt").exists()
