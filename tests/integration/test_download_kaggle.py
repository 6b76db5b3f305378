"""The Kaggle mirror: missing credentials fail fast and clearly; a downloaded mirror is installed by links."""

from __future__ import annotations

import os

import pytest
from http_server import tiny_png

from cxr_tools.data.download.kaggle import KaggleConfig, credentials_problem, download_kaggle
from cxr_tools.data.download.nih import NihConfig, download_nih
from cxr_tools.errors import ConfigError, DownloadError


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub-cache"))


def _mirror(root):
    for part in (1, 2):
        img = root / f"images_{part:03d}" / "images"
        img.mkdir(parents=True)
        for i in range(2):
            (img / f"{part:05d}{i:03d}_000.png").write_bytes(tiny_png(part + i))
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n")
    (root / "train_val_list.txt").write_text("00001000_000.png\n")
    return root


def test_without_credentials_fails_fast_with_instructions(no_credentials, tmp_path):
    assert credentials_problem() is not None
    with pytest.raises(DownloadError, match=r"Kaggle credentials not found.*KAGGLE_USERNAME.*kaggle.json.*--from"):
        download_kaggle(KaggleConfig(dest=tmp_path / "k"), None)
    assert not (tmp_path / "kagglehub-cache").exists()  # kagglehub never started a download


def test_credentials_are_found_where_kagglehub_looks(no_credentials, monkeypatch, tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
    (folder / "kaggle.json").write_text("{not json")
    assert "not valid JSON" in credentials_problem()
    (folder / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert credentials_problem() is None
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    assert credentials_problem() is not None
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert credentials_problem() is None


def test_nih_metadata_from_kaggle_without_credentials_is_a_failed_item(no_credentials, tmp_path):
    cfg = NihConfig(dest=tmp_path / "nih", parts="1", metadata=("kaggle",), base_url="http://127.0.0.1:9", retries=0)
    res = download_nih(cfg, None)
    assert res.parts[0].failed and "cannot connect" in res.parts[0].detail
    assert res.metadata[0].failed and "Kaggle credentials not found" in res.metadata[0].detail


def test_install_from_downloaded_mirror_by_hardlink(tmp_path):
    src = _mirror(tmp_path / "mirror")
    res = download_kaggle(KaggleConfig(dest=tmp_path / "k", from_dir=src), None)
    assert res.disk.n_images == 4 and res.files.files == 6
    assert res.metadata == ("Data_Entry_2017.csv", "train_val_list.txt") and res.missing == ("test_list.txt",)
    out = tmp_path / "k/images_002/images/00002001_000.png"
    assert out.read_bytes() == tiny_png(3)
    assert os.stat(out).st_ino == os.stat(src / "images_002/images/00002001_000.png").st_ino
    again = download_kaggle(KaggleConfig(dest=tmp_path / "k", from_dir=src), None)
    assert again.files.status == "skipped" and again.files.detail == "0 new, 6 already present"


def test_install_by_copy_and_bad_options(tmp_path):
    src = _mirror(tmp_path / "mirror")
    download_kaggle(KaggleConfig(dest=tmp_path / "k", from_dir=src, link="copy"), None)
    out = tmp_path / "k/images_001/images/00001000_000.png"
    assert os.stat(out).st_ino != os.stat(src / "images_001/images/00001000_000.png").st_ino
    with pytest.raises(ConfigError, match="link mode"):
        download_kaggle(KaggleConfig(dest=tmp_path / "k", from_dir=src, link="move"), None)
    with pytest.raises(ConfigError, match="source itself"):
        download_kaggle(KaggleConfig(dest=src, from_dir=src), None)
