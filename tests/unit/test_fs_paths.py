"""Atomic writes leave the old file intact on failure; path roots follow the environment lazily."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cxr_tools import paths
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.fs import atomic_path, atomic_write_json, atomic_write_text
from cxr_tools.runtime.locks import LOCK_NAME, release_all
from cxr_tools.runtime.outputs import MARKER, OutputSpec, claim, decide, prepare


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


def test_prepare_refuses_then_overwrites_only_its_own(tmp_path):
    out = tmp_path / "out"
    spec = OutputSpec(command="test", what="output")
    prepare(out, spec, overwrite=False)
    atomic_write_text(out / "marker", "x")  # recorded in the folder's marker as it is written
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(out, spec, overwrite=False)
    prepare(out, spec, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, LOCK_NAME])  # the lock is held until the end
    release_all()
    assert not out.exists()  # the lock created it; left empty, it goes with the lock (and its unused marker)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"not a cxr output \(it holds notes.txt\)"):
        prepare(out, spec, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


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


def test_decide_is_the_one_overwrite_and_resume_policy(tmp_path):
    out = tmp_path / "out"
    spec = OutputSpec(command="test", what="output", complete=lambda p: (p / "done").exists(), resumable=True)

    def plan(**kw):
        return decide(out, spec, **kw).action

    assert plan(overwrite=False) == "new"
    assert out.is_dir()  # created to hold its lock
    assert plan(overwrite=False) == "new"  # an empty directory is as good as none
    claim(decide(out, spec, overwrite=False))
    atomic_write_text(out / "part", "x")
    with pytest.raises(OutputExistsError, match=r"incomplete.*--resume.*--overwrite"):
        plan(overwrite=False)
    assert plan(overwrite=False, resume=True) == "resume"
    assert plan(overwrite=True, resume=True) == "replace"  # --overwrite wins unless the spec says resume_first
    assert decide(out, replace(spec, resume_first=True), overwrite=True, resume=True).action == "resume"
    assert plan(overwrite=True) == "replace"
    assert decide(out, replace(spec, restart=True), overwrite=False).action == "replace"
    atomic_write_text(out / "done", "x")
    with pytest.raises(OutputExistsError, match=r"already complete.*--overwrite"):
        plan(overwrite=False, resume=True)
    assert plan(overwrite=True, resume=True) == "replace"
    (out / "thesis.tex").write_text("precious")
    (out / ".notes").write_text("hidden")
    claim(decide(out, spec, overwrite=True))  # replaces what cxr wrote, and only that
    assert sorted(p.name for p in out.iterdir()) == sorted([".notes", MARKER, LOCK_NAME, "thesis.tex"])
    assert (out / "thesis.tex").read_text() == "precious" and (out / ".notes").read_text() == "hidden"
    (out / MARKER).unlink()  # without the record, nothing there is ours: refused, --overwrite or not
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"not a cxr output \(it holds thesis.tex\)"):
            plan(overwrite=overwrite, resume=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_decide_for_a_file(tmp_path):
    csv = tmp_path / "p.csv"
    spec = OutputSpec(command="test", what="CSV", file=True)
    assert decide(csv, spec, overwrite=False).action == "new"
    csv.write_text("path,error\n")
    with pytest.raises(OutputExistsError, match=r"already exists.*--overwrite"):
        decide(csv, spec, overwrite=False)
    assert decide(csv, spec, overwrite=True).action == "replace"
    with pytest.raises(OutputExistsError, match="is a directory"):
        decide(tmp_path, spec, overwrite=True)
    mine = replace(spec, recognise=lambda p: None)
    with pytest.raises(OutputExistsError, match="not a cxr CSV"):
        decide(csv, mine, overwrite=True)
