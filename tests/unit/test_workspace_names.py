"""The workspace under CXR_HOME: names become paths, defaults are unique or refused, run names are deterministic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cxr_tools import workspace
from cxr_tools.errors import ConfigError, CxrError, WorkspaceError


def _home() -> Path:
    return Path(os.environ["CXR_HOME"])


def _dataset(name: str) -> Path:
    path = _home() / "data" / name
    path.mkdir(parents=True)
    (path / "metadata.csv").write_text("x\n")
    return path


def _cache(name: str, complete: bool = True) -> Path:
    path = _home() / "cache" / name
    path.mkdir(parents=True)
    if complete:
        (path / "manifest.json").write_text(json.dumps({"counts": {"images": 12}, "image_size": [32, 32]}))
    return path


def _run(kind: str, name: str, status: str = "completed", end: str = "2026-01-01T00:00:00+00:00") -> Path:
    path = _home() / "runs" / kind / name
    (path / "model").mkdir(parents=True)
    (path / "model" / "model.json").write_text("{}")
    info = {"kind": kind, "status": status, "start_time": end, "end_time": end if status != "running" else None}
    (path / "run.json").write_text(json.dumps(info))
    (path / "metrics.jsonl").write_text('{"val_auc": 0.5}\n{"val_auc": 0.75}\n{"val_auc": 0.6}\n')
    return path


def test_no_name_and_one_candidate_is_that_one():
    nih = _dataset("nih")
    assert workspace.resolve_dataset(None) == nih
    cache = _cache("nih-256px")
    _cache("half-done", complete=False)  # an incomplete cache is no candidate
    assert workspace.resolve_cache(None) == cache


def test_no_name_and_several_candidates_is_a_usage_error_listing_them():
    _dataset("nih")
    _dataset("synthetic")
    with pytest.raises(WorkspaceError) as err:
        workspace.resolve_dataset(None)
    assert err.value.exit_code == 2
    assert "nih, synthetic" in str(err.value) and "SRC" in str(err.value)


def test_no_name_and_nothing_there_says_how_to_make_one():
    with pytest.raises(ConfigError) as err:
        workspace.resolve_cache(None, "--data")
    assert not isinstance(err.value, WorkspaceError) and err.value.exit_code == 1
    assert "--data" in str(err.value) and "cxr preprocess" in str(err.value)


def test_a_name_is_looked_up_and_an_unknown_one_lists_the_existing(tmp_path, monkeypatch):
    cache = _cache("nih-256px")
    _cache("synthetic-32px")
    assert workspace.resolve_cache("nih-256px") == cache
    with pytest.raises(WorkspaceError) as err:
        workspace.resolve_cache("nih-128px")
    assert "nih-256px, synthetic-32px" in str(err.value) and err.value.exit_code == 2
    # an existing path wins over a name, and a path (with a separator) is never looked up
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nih-256px").mkdir()
    assert workspace.resolve_cache("nih-256px") == Path("nih-256px")
    assert workspace.resolve_cache("elsewhere/c") == Path("elsewhere/c")


def test_run_names_kind_slash_name_or_unique_name():
    a = _run("meta-train", "c-2w7s-aaaa")
    _run("train", "c-resnet18-bbbb")
    _run("train-siamese", "same")
    _run("meta-train", "same")
    assert workspace.resolve_run("c-2w7s-aaaa") == a
    assert workspace.resolve_run("meta-train/c-2w7s-aaaa") == a
    with pytest.raises(WorkspaceError, match="Several runs are named 'same'"):
        workspace.resolve_run("same")
    with pytest.raises(WorkspaceError, match="train/c-resnet18-bbbb"):
        workspace.resolve_run("nope")


def _settings(**changed):
    defaults = {"shots": 5, "ways": 2, "device": "auto", "workers": 0, "threads": None, "quiet": False}
    return workspace.significant({**defaults, "output": None, **changed}, defaults)


def test_run_dir_is_deterministic_and_changes_with_a_setting_that_changes_the_result(tmp_path, monkeypatch):
    cache = _cache("syn-32px")
    first = workspace.run_dir("meta-train", cache, "2w7s", _settings(shots=7))
    assert first == workspace.run_dir("meta-train", cache, "2w7s", _settings(shots=7))
    assert first.parent == _home() / "runs" / "meta-train" and first.name.startswith("syn-32px-2w7s-")
    # device, workers, threads, quiet and the output don't change the result, so not the run either
    same = _settings(shots=7, device="cpu", workers=3, threads=2, quiet=True, output="x")
    assert workspace.run_dir("meta-train", cache, "2w7s", same) == first
    # the cache named through another path is the same cache
    monkeypatch.chdir(cache.parent)
    assert workspace.run_dir("meta-train", Path("syn-32px"), "2w7s", _settings(shots=7)) == first
    assert workspace.run_dir("meta-train", cache, "2w7s", _settings(shots=7, ways=3)) != first
    assert workspace.run_dir("train", cache, "2w7s", _settings(shots=7)) != first


def test_cache_names_spell_out_the_common_settings_and_hash_the_rest():
    assert workspace.cache_dir("nih", {}).name == "nih-256px"
    assert workspace.cache_dir("nih", {"size": 64, "format": "memmap"}).name == "nih-64px-memmap"
    odd = workspace.cache_dir("nih", {"size": 64, "brightness": 5.0, "clahe": False}).name
    assert odd.startswith("nih-64px-noclahe-h") and odd != workspace.cache_dir("nih", {"size": 64, "clahe": False}).name


def test_an_unwritable_workspace_is_one_clear_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CXR_HOME", str(blocker / "home"))
    with pytest.raises(CxrError) as err:
        workspace.dataset_dir("synthetic")
    assert "not writable" in str(err.value) and "CXR_HOME" in str(err.value) and "\n" not in str(err.value)


def test_latest_completed_run_and_listing():
    _dataset("synthetic")
    _cache("synthetic-32px")
    _run("train", "old", end="2026-01-01T00:00:00+00:00")
    new = _run("meta-train", "new", end="2026-02-01T00:00:00+00:00")
    _run("train", "newest-but-running", status="running", end="2026-03-01T00:00:00+00:00")
    assert workspace.latest_completed() == new
    assert workspace.latest_completed(("train",)).name == "old"
    found = {(e.kind, e.name): e for e in workspace.entries()}
    assert found[("meta-train", "meta-train/new")].metric == "best val_auc 0.750"
    # run.json says running, but no command holds its lock: listed as interrupted (tests/integration/test_stale_runs)
    assert found[("train", "train/newest-but-running")].status == "interrupted"
    assert found[("cache", "synthetic-32px")].metric == "12 images, 32px"
    assert found[("dataset", "synthetic")].status == "completed"
