"""`cxr download nih|kaggle|chexpert` through the real CLI, against a loopback mirror."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from http_server import LoopbackServer, chexpert_members, make_zip, md5, nih_part
from typer.testing import CliRunner

from cxr_tools.cli.app import app

FAST = ["--retries", "2", "--backoff", "0.01", "--timeout", "5"]


@pytest.fixture
def mirror(tmp_path):
    parts = {p: nih_part(p, n=2) for p in (1, 2, 3)}
    with LoopbackServer({f"nih/images_{p:03d}.tar.gz": data for p, (_, data) in parts.items()}) as srv:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(
            yaml.safe_dump({"nih": {"checksums": {f"images_{p:03d}.tar.gz": md5(d) for p, (_, d) in parts.items()}}})
        )
        srv.config_file = cfg
        yield srv


def _run(*args, env=None):
    return CliRunner(env={"CXR_PLAIN_PROGRESS": "1", "COLUMNS": "200", **(env or {})}).invoke(
        app, [str(a) for a in args]
    )


def test_nih_json_and_rerun(mirror, tmp_path):
    dest = tmp_path / "nih"
    args = ["download", "nih", "-o", dest, "--base-url", mirror.url("nih"), "--parts", "1-2"]
    res = _run(*args, "--config", mirror.config_file, *FAST, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [(p["name"], p["status"]) for p in out["parts"]] == [
        ("images_001.tar.gz", "downloaded"),
        ("images_002.tar.gz", "downloaded"),
    ]
    assert out["disk"]["n_images"] == 4 and out["failed"] == 0
    assert "[images_001.tar.gz] started" in res.stderr  # per-file byte progress on stderr
    n = len(mirror.hits)
    res = _run(*args, "--config", mirror.config_file, *FAST)
    assert res.exit_code == 0 and len(mirror.hits) == n
    assert "skipped" in res.stdout and "4 images" in res.stdout


def test_nih_partial_failure_exits_3(mirror, tmp_path):
    mirror.corrupt.add("nih/images_003.tar.gz")
    res = _run(
        "download", "nih", "-o", tmp_path / "nih", "--base-url", mirror.url("nih"), "--parts", "2-3",
        "--config", mirror.config_file, *FAST,
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    assert "Partial success: 1 archives or metadata files failed" in res.stderr
    assert "failed" in res.stdout and "archive corrupt or changed upstream" in res.stdout
    assert (tmp_path / "nih/images/00002000_000.png").is_file()


def test_nih_all_failed_exits_1_and_default_dest(mirror, tmp_path):
    res = _run(
        "download", "nih", "--base-url", mirror.url("missing"), "--parts", "1", *FAST,
        env={"CXR_DATA": str(tmp_path / "data")},
    )  # fmt: skip
    assert res.exit_code == 1
    assert "all 1 archives or metadata files failed" in res.stderr and "HTTP 404" in res.stdout
    assert (tmp_path / "data/nih").is_dir()


@pytest.mark.parametrize("parts", ["0", "1-x", "5-2", "13"])
def test_nih_bad_parts_is_a_usage_error(parts, tmp_path):
    res = _run("download", "nih", "-o", tmp_path / "nih", "--parts", parts)
    assert res.exit_code == 2
    assert "--parts" in res.output
    assert not (tmp_path / "nih").exists()


def test_chexpert_from_file_and_bad_archive(tmp_path):
    good = tmp_path / "chexpert.zip"
    good.write_bytes(make_zip(chexpert_members()))
    res = _run("download", "chexpert", "--from", good, "-o", tmp_path / "cx")
    assert res.exit_code == 0, res.output
    assert "train.csv: 2 rows, valid.csv: 1 rows" in res.stdout
    bad = tmp_path / "other.zip"
    bad.write_bytes(make_zip(chexpert_members(with_train=False)))
    res = _run("download", "chexpert", "--from", bad, "-o", tmp_path / "cx2")
    assert res.exit_code == 1
    assert "Error: other.zip is not a CheXpert archive" in res.stderr
    assert re.search(r"\[extract other.zip\] finished, (\d+)/\1 \(100%\)", res.stderr)  # progress on stderr


def test_chexpert_from_url(tmp_path):
    data = make_zip(chexpert_members())
    with LoopbackServer({"CheXpert-v1.0-small.zip": data}) as srv:
        res = _run(
            "download", "chexpert", "--from", srv.url("CheXpert-v1.0-small.zip") + "?sig=abc", "-o", tmp_path / "cx",
            "--md5", md5(data), "--keep-archives", "--json", *FAST,
        )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["archive"]["status"] == "downloaded" and out["train_rows"] == 2
    assert (tmp_path / "cx/archives/CheXpert-v1.0-small.zip").read_bytes() == data


def test_kaggle_without_credentials(tmp_path):
    env = {"HOME": str(tmp_path), "KAGGLE_USERNAME": None, "KAGGLE_KEY": None, "KAGGLE_API_TOKEN": None,
           "KAGGLE_CONFIG_DIR": None}  # fmt: skip
    res = _run("download", "kaggle", "-o", tmp_path / "k", env=env)
    assert res.exit_code == 1
    assert "Kaggle credentials not found" in res.stderr and "KAGGLE_USERNAME" in res.stderr
