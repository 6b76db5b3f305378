"""The ownership record (.cxr-output.json): what it records, what replacing an owned folder removes, and how the
previous release's outputs (no marker) are recognised by the records they wrote."""

from __future__ import annotations

import json

import pytest

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.data.synthetic.generator import legacy_files
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.fs import atomic_write_text
from cxr_tools.runtime.locks import LOCK_NAME
from cxr_tools.runtime.outputs import MARKER, OutputSpec, claim, decide, prepare, read_marker, record, tree_entries
from cxr_tools.runtime.rundir import open_run

SPEC = OutputSpec(command="test", what="output", writes=("log.jsonl",))


def test_the_marker_records_what_cxr_writes_there_and_nothing_else(tmp_path):
    out = prepare(tmp_path / "out", SPEC, overwrite=False)
    atomic_write_text(out / "a.txt", "a")
    atomic_write_text(out / "sub" / "deeper" / "b.txt", "b")
    (out / "users.txt").write_text("not through cxr")
    atomic_write_text(tmp_path / "beside.txt", "outside the output")
    record(out / "store.h5")  # a file written without atomic_path, recorded before it is written
    marker = read_marker(out)
    assert marker is not None and marker["command"] == "test" and marker["tool"] == "cxr-tools"
    assert marker["entries"] == ["a.txt", "log.jsonl", "store.h5", "sub/", "sub/deeper/", "sub/deeper/b.txt"]
    one, two = (prepare(tmp_path / name, SPEC, overwrite=False) for name in ("one", "two"))
    assert (one / MARKER).read_bytes() == (two / MARKER).read_bytes()  # no time stamp: same output, same bytes


def test_replacing_removes_the_record_and_nested_outputs_never_the_rest(tmp_path):
    work = prepare(tmp_path / "work", OutputSpec(command="demo", what="demo"), overwrite=False)
    run = prepare(work / "runs" / "r1", OutputSpec(command="train", what="run directory"), overwrite=False)
    atomic_write_text(run / "checkpoints" / "last.pt", "weights")
    atomic_write_text(work / "summary.md", "report")
    assert set(read_marker(work)["entries"]) == {"runs/", "runs/r1/", "summary.md"}  # the nested run, as a folder
    (run / "checkpoints" / "mine.pt").write_text("the user's")
    (work / "runs" / "notes.txt").write_text("the user's")
    (work / ".hidden").write_text("the user's")
    claim(decide(work, OutputSpec(command="demo", what="demo"), overwrite=True))
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and p.name != ".cxr.lock")
    assert left == [".cxr-output.json", ".hidden", "runs/notes.txt", "runs/r1/checkpoints/mine.pt"]


def test_a_recorded_folder_replaced_by_a_link_is_not_followed(tmp_path):
    out = prepare(tmp_path / "out", SPEC, overwrite=False)
    atomic_write_text(out / "sub" / "a.txt", "cxr's")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "a.txt").write_text("the user's")
    (out / "sub" / "a.txt").unlink()
    (out / "sub").rmdir()
    (out / "sub").symlink_to(theirs)
    claim(decide(out, SPEC, overwrite=True))
    assert (theirs / "a.txt").read_text() == "the user's" and (out / "sub").is_symlink()


def test_an_unreadable_marker_is_not_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("{not json")
    (out / "a.png").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"not a cxr output \(it holds a.png\)"):
        decide(out, SPEC, overwrite=True)
    assert (out / "a.png").read_bytes() == b"x"


def _previous_release_run(path, tool="cxr-tools"):
    (path / "checkpoints").mkdir(parents=True)
    (path / "model").mkdir()
    info = {"schema_version": 1, "kind": "train", "status": "completed", "tool": tool}
    (path / "run.json").write_text(json.dumps(info))
    (path / "config.yaml").write_text("lr: 0.1\n")
    (path / "checkpoints" / "last.pt").write_bytes(b"old")
    (path / "model" / "model.json").write_text("{}")
    (path / "notes.txt").write_text("the user's")
    (path / "checkpoints" / "mine.pt").write_bytes(b"the user's")


def test_a_run_of_the_previous_release_is_replaced_by_its_record(tmp_path):
    run = tmp_path / "run"
    _previous_release_run(run)
    with pytest.raises(OutputExistsError, match=r"already complete.*--overwrite"):
        open_run(run, "train", {"lr": 0.2})
    again = open_run(run, "train", {"lr": 0.2}, overwrite=True)
    assert again.status == "running" and again.read_config() == {"lr": 0.2}
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "model").exists()
    assert (run / "notes.txt").read_text() == "the user's"
    assert (run / "checkpoints" / "mine.pt").read_bytes() == b"the user's"
    assert read_marker(run)["command"] == "train"
    other = tmp_path / "other"
    _previous_release_run(other, tool="someone-else")  # a run.json that is not this tool's: not ours
    with pytest.raises(OutputExistsError, match="not a cxr run directory"):
        open_run(other, "train", {"lr": 0.2}, overwrite=True)
    assert (other / "checkpoints" / "last.pt").read_bytes() == b"old"


@pytest.mark.parametrize("layout", ["nih", "chexpert"])
def test_a_synthetic_dataset_record_defines_every_file_it_wrote(tmp_path, layout):
    dest = generate(SyntheticConfig(dest=tmp_path / "ds", patients=3, size=32, layout=layout)).dest
    marker = read_marker(dest)
    assert marker is not None and marker["entries"] == [e for e in tree_entries(dest) if e != MARKER]
    (dest / MARKER).unlink()  # as the previous release left it
    assert legacy_files(dest) == tree_entries(dest)
    images = next(p for p in dest.iterdir() if p.is_dir())
    (images / "mine.png").write_bytes(b"the user's")
    (dest / ".notes").write_text("the user's")
    generate(SyntheticConfig(dest=dest, patients=2, size=32, layout=layout, seed=1, overwrite=True))
    assert (images / "mine.png").read_bytes() == b"the user's" and (dest / ".notes").read_text() == "the user's"
    users = {MARKER, ".notes", f"{images.name}/mine.png"}
    assert read_marker(dest)["entries"] == [e for e in tree_entries(dest) if e not in users]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing left beside it


def test_a_demo_of_the_previous_release_is_refused_with_the_reason(tmp_path):
    from cxr_tools.engine.demo import DemoConfig, run_demo

    work = tmp_path / "cxr-demo"
    (work / "cache").mkdir(parents=True)
    (work / ".cxr-demo").write_text("cxr demo work directory: --overwrite may replace it\n")
    with pytest.raises(OutputExistsError, match=r"earlier cxr version.*Delete it yourself"):
        run_demo(DemoConfig(workdir=work, overwrite=True))
    assert sorted(p.name for p in work.iterdir() if p.name != LOCK_NAME) == [".cxr-demo", "cache"]
