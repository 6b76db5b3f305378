"""Atomic writes leave the old file intact on failure; path roots follow the environment lazily."""

from __future__ import annotations

import pytest

from cxr_tools import paths
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.fs import atomic_path, atomic_write_json, atomic_write_text, prepare_output_dir


def test_atomic_write_replaces_and_failure_keeps_old(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temp files left
    atomic_write_json(target, {"k": 1})
    assert '"k": 1' in target.read_text()


def test_prepare_output_dir_refuses_then_overwrites(tmp_path):
    out = tmp_path / "out"
    prepare_output_dir(out, overwrite=False)
    (out / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output_dir(out, overwrite=False)
    prepare_output_dir(out, overwrite=True)
    assert list(out.iterdir()) == []


def test_roots_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "h"))
    assert paths.runs_root() == tmp_path / "h" / "runs"
    monkeypatch.setenv("CXR_RUNS", str(tmp_path / "r"))
    assert paths.runs_root() == tmp_path / "r"
    assert paths.resolve("explicit", paths.runs_root(), "x").name == "explicit"
    assert paths.resolve(None, paths.cache_root(), "nih") == tmp_path / "h" / "cache" / "nih"


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
