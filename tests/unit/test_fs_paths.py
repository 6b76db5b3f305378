"""Atomic writes leave the old file intact on failure; path roots follow the environment lazily."""

from __future__ import annotations

import pytest

from cxr_tools import paths
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.fs import atomic_path, atomic_write_json, atomic_write_text, prepare_output_dir
from cxr_tools.runtime.locks import LOCK_NAME, release_all


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


def test_prepare_output_dir_refuses_then_overwrites_only_its_own(tmp_path):
    out = tmp_path / "out"
    ours = lambda p: (p / "marker").is_file()  # noqa: E731
    prepare_output_dir(out, overwrite=False, owned=ours)
    (out / "marker").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output_dir(out, overwrite=False, owned=ours)
    prepare_output_dir(out, overwrite=True, owned=ours)
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # held until the command ends
    release_all()
    assert not out.exists()  # the lock created it; left empty, it goes with the lock
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"not a cxr output \(it holds notes.txt\)"):
        prepare_output_dir(out, overwrite=True, owned=ours)
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


def test_output_plan_is_the_one_overwrite_and_resume_policy(tmp_path):
    from cxr_tools.runtime.fs import apply_output_plan, only_files, output_plan

    out = tmp_path / "out"

    def plan(**kw):
        return output_plan(out, complete=lambda p: (p / "done").exists(), owned=only_files({"part", "done"}), **kw)

    assert plan(overwrite=False) == "new"
    assert out.is_dir()  # created to hold its lock
    assert plan(overwrite=False) == "new"  # an empty directory is as good as none
    (out / "part").write_text("x")
    with pytest.raises(OutputExistsError, match=r"incomplete.*--resume.*--overwrite"):
        plan(overwrite=False)
    assert plan(overwrite=False, resume=True) == "resume"
    assert plan(overwrite=True, resume=True) == "resume"
    assert plan(overwrite=True) == "replace"
    assert plan(overwrite=False, restart=True) == "replace"
    (out / "done").write_text("x")
    with pytest.raises(OutputExistsError, match=r"already complete.*--overwrite"):
        plan(overwrite=False, resume=True)
    assert plan(overwrite=True, resume=True) == "replace"
    (out / "done").unlink()
    (out / "thesis.tex").write_text("precious")
    for overwrite in (False, True):  # a file the command did not write is never deleted, --overwrite or not
        with pytest.raises(OutputExistsError, match=r"not a cxr output \(it holds part, thesis.tex\)"):
            plan(overwrite=overwrite, resume=True)
    assert (out / "thesis.tex").read_text() == "precious"
    (out / "thesis.tex").unlink()
    apply_output_plan(out, "replace")
    assert out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_NAME]  # the lock stays while replacing


def test_output_plan_for_a_file(tmp_path):
    from cxr_tools.runtime.fs import output_plan

    csv = tmp_path / "p.csv"
    assert output_plan(csv, overwrite=False, file=True) == "new"
    csv.write_text("path,error\n")
    with pytest.raises(OutputExistsError, match=r"already exists.*--overwrite"):
        output_plan(csv, overwrite=False, file=True)
    assert output_plan(csv, overwrite=True, file=True) == "replace"
    with pytest.raises(OutputExistsError, match="is a directory"):
        output_plan(tmp_path, overwrite=True, file=True)
