"""``cxr preprocess``: flags reach the engine, exit codes 0 / 1 / 3, --json, refusals, --merge, --config."""

from __future__ import annotations

import json

import pytest
from integration.preprocess_fixtures import add_bad_inputs, assert_same_cache, make_nih
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    return make_nih(tmp_path_factory.mktemp("nih"), patients=4, per_patient=2)


def _run(*args):
    return runner.invoke(app, ["preprocess", *map(str, args)])


def test_flags_reach_the_engine(monkeypatch, tmp_path, nih):
    import cxr_tools.engine.preprocess as engine

    seen = {}
    real = engine.preprocess

    def spy(config, progress=None):
        seen["config"] = config
        return real(config, progress)

    monkeypatch.setattr(engine, "preprocess", spy)
    out = tmp_path / "c"
    args = [nih, "-o", out, "--size", "32", "--crop", "letterbox", "--no-clahe", "--clahe-clip", "3.5"]
    args += ["--clahe-tile", "4", "--brightness", "-7", "--format", "memmap", "--views", "PA,AP", "--seed", "5"]
    args += ["--fractions", "0.6,0.2,0.2", "--workers", "0", "--chunk-size", "3", "--source", "nih"]
    result = _run(*args)
    assert result.exit_code == 0, result.stderr
    cfg = seen["config"]
    assert (cfg.size, cfg.crop, cfg.clahe, cfg.clahe_clip, cfg.clahe_tile, cfg.brightness) == (
        32,
        "letterbox",
        False,
        3.5,
        4,
        -7.0,
    )
    assert (cfg.format, cfg.views, cfg.seed, cfg.fractions, cfg.workers, cfg.chunk_size, cfg.source) == (
        "memmap",
        ("PA", "AP"),
        5,
        (0.6, 0.2, 0.2),
        0,
        3,
        "nih",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"]["brightness"] == -7.0 and manifest["storage"] == "memmap"
    assert manifest["splits"]["fractions"] == [0.6, 0.2, 0.2]


def test_json_result_and_refusals(tmp_path, nih):
    out = tmp_path / "c"
    ok = _run(nih, "-o", out, "--size", "32", "--workers", "0", "--json")
    assert ok.exit_code == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["images"] == 8 and data["rejected"] == 0 and data["output"] == str(out)
    assert data["storage"] == "hdf5" and sum(data["splits"].values()) == 8

    again = _run(nih, "-o", out, "--size", "32", "--workers", "0")
    assert again.exit_code == 1 and "already complete" in again.stderr and "--overwrite" in again.stderr
    assert _run(nih, "-o", out, "--size", "32", "--workers", "0", "--overwrite").exit_code == 0

    (out / "manifest.json").unlink()
    incomplete = _run(nih, "-o", out, "--size", "32", "--workers", "0")
    assert incomplete.exit_code == 1 and "--resume" in incomplete.stderr
    resumed = _run(nih, "-o", out, "--size", "32", "--workers", "0", "--resume")
    assert resumed.exit_code == 0, resumed.stderr


def test_bad_inputs_exit_3_and_all_bad_exit_1(tmp_path):
    src = make_nih(tmp_path / "nih", patients=2, per_patient=2)
    add_bad_inputs(src)
    out = tmp_path / "c"
    partial = _run(src, "-o", out, "--size", "32", "--workers", "0")
    assert partial.exit_code == 3
    assert "Partial success: 6 inputs failed" in partial.stderr
    assert "rejected" in partial.stdout and (out / "manifest.json").is_file()

    for png in (src / "images").glob("*.*"):
        png.write_bytes(b"")
    failed = _run(src, "-o", tmp_path / "c2", "--size", "32", "--workers", "0")
    assert failed.exit_code == 1 and "None of the" in failed.stderr
    assert not (tmp_path / "c2" / "manifest.json").exists()


def test_usage_errors(tmp_path, nih):
    bad_shard = _run(nih, "-o", tmp_path / "a", "--shard", "4/4")
    assert bad_shard.exit_code == 1 and "out of range" in bad_shard.stderr
    bad_format = _run(nih, "-o", tmp_path / "b", "--format", "zarr")
    assert bad_format.exit_code == 1 and "hdf5" in bad_format.stderr
    two = _run(nih, nih, "-o", tmp_path / "c")
    assert two.exit_code == 1 and "--merge" in two.stderr
    fractions = _run(nih, "-o", tmp_path / "d", "--fractions", "0.5,0.5")
    assert fractions.exit_code == 1 and "three numbers" in fractions.stderr
    missing = _run(tmp_path / "nowhere", "-o", tmp_path / "e")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_shards_and_merge_from_the_command_line(tmp_path, nih):
    for i in range(3):
        r = _run(nih, "-o", tmp_path / f"part{i}", "--size", "32", "--workers", "0", "--shard", f"{i}/3")
        assert r.exit_code == 0, r.stderr
    merged = _run("--merge", *(tmp_path / f"part{i}" for i in range(3)), "-o", tmp_path / "merged", "--json")
    assert merged.exit_code == 0, merged.stderr
    assert json.loads(merged.stdout)["images"] == 8
    whole = _run(nih, "-o", tmp_path / "whole", "--size", "32", "--workers", "0")
    assert whole.exit_code == 0
    assert_same_cache(tmp_path / "merged", tmp_path / "whole")


def test_config_file_values_and_flags_win(tmp_path, nih):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("preprocess:\n  size: 40\n  clahe: false\n  format: memmap\n  workers: 0\n")
    out = tmp_path / "c"
    r = _run(nih, "-o", out, "--config", cfg, "--format", "hdf5")
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_size"] == [40, 40] and manifest["preprocessing"]["clahe"] is False
    assert manifest["storage"] == "hdf5"
