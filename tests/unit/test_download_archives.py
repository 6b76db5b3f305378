"""Safe extraction: traversal, absolute paths, links and device files are refused, nothing half-installed."""

from __future__ import annotations

import io
import tarfile

import pytest
from http_server import make_tar, make_zip, tiny_png

from cxr_tools.data.download.archives import TMP_PREFIX, archive_kind, extract
from cxr_tools.errors import DownloadError, InputError
from cxr_tools.runtime.progress import RecordingProgress


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_extracts_tar_gz_and_reports_bytes(tmp_path):
    members = {"images/a.png": tiny_png(1), "images/sub/b.png": tiny_png(2)}
    archive = _write(tmp_path, "x.tar.gz", make_tar(members))
    rec = RecordingProgress()
    out = extract(archive, tmp_path / "dest", progress=rec)
    assert sorted(out.files) == ["images/a.png", "images/sub/b.png"]
    assert (tmp_path / "dest/images/sub/b.png").read_bytes() == tiny_png(2)
    assert out.bytes == sum(len(v) for v in members.values())
    assert rec.done("extract x.tar.gz") == archive.stat().st_size
    assert not list((tmp_path / "dest").glob(TMP_PREFIX + "*"))


def test_extracts_zip_and_plain_tar(tmp_path):
    z = _write(tmp_path, "x.zip", make_zip({"d/a.txt": b"hello"}))
    t = _write(tmp_path, "noext", make_tar({"d/b.txt": b"world"}, gz=False))
    assert archive_kind(z) == "zip" and archive_kind(t) == "tar"
    extract(z, tmp_path / "o")
    extract(t, tmp_path / "o")
    assert (tmp_path / "o/d/a.txt").read_bytes() == b"hello"
    assert (tmp_path / "o/d/b.txt").read_bytes() == b"world"


@pytest.mark.parametrize(
    ("name", "why"),
    [("../evil.png", "escapes"), ("images/../../evil.png", "escapes"), ("/etc/evil.png", "absolute")],
)
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_rejects_traversal_and_absolute_members(tmp_path, name, why, kind):
    members = {"images/good.png": tiny_png(1), name: b"x"}
    data = make_tar(members) if kind == "tar" else make_zip(members)
    archive = _write(tmp_path, f"bad.{kind}", data)
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(DownloadError, match=why) as err:
        extract(archive, dest)
    assert name in str(err.value)
    # nothing installed, not even the good member before the bad one, and nothing outside dest
    assert not (dest / "images/good.png").exists()
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "sub/evil.png").exists()
    assert not list(dest.glob(TMP_PREFIX + "*"))


def test_rejects_symlink_member(tmp_path):
    archive = _write(tmp_path, "l.tar.gz", make_tar({"images/a.png": tiny_png(1)}, links={"images/x": "/etc/passwd"}))
    with pytest.raises(DownloadError, match=r"'images/x' is a link"):
        extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest/images/x").exists() and not (tmp_path / "dest/images/a.png").exists()


def test_rejects_hardlink_and_device_members(tmp_path):
    for kind, label in ((tarfile.LNKTYPE, "link"), (tarfile.CHRTYPE, "device")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            info = tarfile.TarInfo("images/special")
            info.type = kind
            info.linkname = "images/a.png" if kind == tarfile.LNKTYPE else ""
            tf.addfile(info)
        archive = _write(tmp_path, f"s{kind!r}.tar.gz", buf.getvalue())
        with pytest.raises(DownloadError, match=label):
            extract(archive, tmp_path / "dest")


def test_rejects_zip_symlink(tmp_path):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    archive = _write(tmp_path, "l.zip", buf.getvalue())
    with pytest.raises(DownloadError, match="symbolic link"):
        extract(archive, tmp_path / "dest")


def test_truncated_and_non_archives(tmp_path):
    data = make_tar({f"images/{i}.png": tiny_png(i, 64) for i in range(20)})
    trunc = _write(tmp_path, "t.tar.gz", data[: len(data) // 2])
    with pytest.raises(DownloadError, match="damaged or truncated"):
        extract(trunc, tmp_path / "dest")
    assert not (tmp_path / "dest/images").exists()
    html = _write(tmp_path, "page.gz", b"<html>expired link</html>")
    with pytest.raises(InputError, match="neither a zip nor a tar"):
        extract(html, tmp_path / "dest")


def test_stale_temp_dir_of_interrupted_extraction_is_removed(tmp_path):
    archive = _write(tmp_path, "x.tar.gz", make_tar({"a.txt": b"1"}))
    dest = tmp_path / "dest"
    stale = dest / f"{TMP_PREFIX}x.tar.gz-killed"
    stale.mkdir(parents=True)
    (stale / "a.txt").write_bytes(b"half")
    extract(archive, dest)
    assert not stale.exists()
    assert (dest / "a.txt").read_bytes() == b"1"


def test_check_callback_refuses_before_install(tmp_path):
    archive = _write(tmp_path, "x.tar.gz", make_tar({"a.txt": b"1"}))

    def check(root, files):
        assert (root / "a.txt").is_file()
        raise InputError("not what we wanted")

    with pytest.raises(InputError, match="not what we wanted"):
        extract(archive, tmp_path / "dest", check=check)
    assert not (tmp_path / "dest/a.txt").exists()
