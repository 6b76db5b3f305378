"""`download_chexpert` from a local archive and from a (loopback) signed URL."""

from __future__ import annotations

import pytest
from http_server import LoopbackServer, chexpert_members, make_tar, make_zip, md5

from cxr_tools.data.download.chexpert import ChexpertConfig, download_chexpert
from cxr_tools.errors import ConfigError, InputError

FAST = {"backoff": 0.01, "backoff_max": 0.02, "retries": 2, "timeout": 5.0}


def test_from_local_zip(tmp_path):
    members = chexpert_members()
    archive = tmp_path / "CheXpert-v1.0-small.zip"
    archive.write_bytes(make_zip(members))
    res = download_chexpert(ChexpertConfig(source=str(archive), dest=tmp_path / "cx"), None)
    assert res.root == tmp_path / "cx/CheXpert-v1.0-small"
    assert (res.train_rows, res.valid_rows) == (2, 1)
    assert res.archive.status == "extracted" and res.archive.files == len(members)
    assert res.disk.n_images == 3
    for name, data in members.items():
        assert (tmp_path / "cx" / name).read_bytes() == data
    assert archive.is_file()  # the user's own file is never deleted
    again = download_chexpert(ChexpertConfig(source=str(archive), dest=tmp_path / "cx"), None)
    assert again.archive.status == "skipped" and again.train_rows == 2


def test_from_signed_url_strips_token_and_deletes_archive(tmp_path):
    data = make_tar(chexpert_members())
    with LoopbackServer({"dl/CheXpert-v1.0-small.tar.gz": data}) as srv:
        srv.cut_after["dl/CheXpert-v1.0-small.tar.gz"] = len(data) // 3
        url = srv.url("dl/CheXpert-v1.0-small.tar.gz") + "?Signature=SECRET"
        res = download_chexpert(ChexpertConfig(source=url, dest=tmp_path / "cx", md5=md5(data), **FAST), None)
        assert res.archive.status == "downloaded" and res.archive.md5 == md5(data)
        assert "SECRET" not in res.archive.detail
        assert [h.range is not None for h in srv.hits] == [False, True]
        assert not (tmp_path / "cx/archives").exists()
        n = len(srv.hits)
        again = download_chexpert(ChexpertConfig(source=url, dest=tmp_path / "cx", **FAST), None)
        assert again.archive.status == "skipped" and len(srv.hits) == n


def test_missing_train_csv_is_a_clear_error_and_installs_nothing(tmp_path):
    archive = tmp_path / "chexpert.zip"
    archive.write_bytes(make_zip(chexpert_members(with_train=False)))
    with pytest.raises(InputError, match=r"not a CheXpert archive: train.csv and valid.csv not found") as err:
        download_chexpert(ChexpertConfig(source=str(archive), dest=tmp_path / "cx"), None)
    assert "valid.csv" in str(err.value)
    assert not (tmp_path / "cx/CheXpert-v1.0-small").exists()
    assert not (tmp_path / "cx/.cxr-download/chexpert.done").exists()


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="--from"):
        download_chexpert(ChexpertConfig(dest=tmp_path / "cx"), None)
    with pytest.raises(InputError, match="no such file"):
        download_chexpert(ChexpertConfig(source=str(tmp_path / "nope.zip"), dest=tmp_path / "cx"), None)
    with pytest.raises(InputError, match="is a directory"):
        download_chexpert(ChexpertConfig(source=str(tmp_path), dest=tmp_path / "cx"), None)
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip(chexpert_members()))
    with pytest.raises(InputError, match="does not match"):
        download_chexpert(ChexpertConfig(source=str(archive), dest=tmp_path / "cx", md5="0" * 32), None)
