"""``--overwrite`` never deletes a folder the tool did not write, and a second writer of an output being
written is refused with one line naming the holder (exit 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import assert_one_line_error
from evaluate_factory import make_eval_cache
from predict_fixtures import make_model_dir
from script_modules import REPO
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.runtime.locks import LOCK_NAME

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_eval_cache(tmp_path_factory.mktemp("safety"), n=120)


def _foreign(tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    return folder


def _commands(cache, tmp_path, out):
    model = make_model_dir(tmp_path / "model", labels=("A", "B"), size=32)
    meta = ["--backbone", "conv4-tiny", "--meta-split", "train=A,B;val=C;test=D,E,F", "--engine", "func"]
    meta += ["--shots", "1", "--queries", "1", "--val-episodes", "0"]
    return {
        "train": ["train", str(cache), "-o", str(out), "--model", "conv4-tiny"],
        "train-siamese": ["train-siamese", str(cache), "-o", str(out), "--backbone", "conv4-tiny"],
        "meta-train": ["meta-train", str(cache), "-o", str(out), *meta],
        "evaluate": [
            "evaluate",
            "--method",
            "pixels",
            "--data",
            str(cache),
            "-o",
            str(out),
            "--episodes",
            "2",
            "--shots",
            "1",
            "--queries",
            "1",
        ],
        "preprocess": ["preprocess", str(cache), "-o", str(out)],
        "preprocess --merge": ["preprocess", str(cache), str(model), "--merge", "-o", str(out)],
        "download synthetic": ["download", "synthetic", "-o", str(out), "--patients", "2", "--size", "32"],
        "demo": ["demo", "-o", str(out), "--quick"],
    }


def test_overwrite_refuses_a_foreign_folder_for_every_command(cache, tmp_path):
    folder = _foreign(tmp_path)
    for name, args in _commands(cache, tmp_path, folder).items():
        res = runner.invoke(app, [*args, "--overwrite"])
        errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
        assert res.exit_code == 1 and len(errors) == 1 and str(folder) in errors[0], (name, res.output)
        assert "--overwrite" in errors[0] and "never" in errors[0], (name, errors[0])
        assert (folder / "thesis.tex").read_text() == "precious", name
        assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"], name  # nothing added, lock gone


def test_predict_overwrite_replaces_only_a_predictions_csv(tmp_path):
    model = make_model_dir(tmp_path / "model", labels=("A", "B"), size=32)
    notes = tmp_path / "notes.csv"
    notes.write_text("name,grade\nann,A\n")
    res = runner.invoke(app, ["predict", "-m", str(model), str(tmp_path), "-o", str(notes), "--overwrite"])
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "not a cxr predictions CSV" in errors[0], res.output
    assert notes.read_text() == "name,grade\nann,A\n"


def _holder(path, tmp_path) -> subprocess.Popen[str]:
    """Another process writing ``path``: it holds the lock until killed."""
    code = (
        "import sys, time; from cxr_tools.runtime.locks import lock_output; "
        f"lock_output({str(path)!r}); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "cxr", "train", "(test holder)"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(cache, tmp_path):
    run, out = tmp_path / "run", tmp_path / "parts"
    holders = [_holder(run, tmp_path), _holder(out, tmp_path)]
    try:
        res = runner.invoke(app, ["train", str(cache), "-o", str(run), "--model", "conv4-tiny"])
        (error,) = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
        assert res.exit_code == 1 and "is being written by" in error, res.output
        assert f"pid {holders[0].pid}" in error and "(test holder)" in error, error
        res = runner.invoke(app, ["preprocess", str(cache), "-o", str(out)])
        assert_one_line_error(res, f"pid {holders[1].pid}")
        assert not (run / "run.json").exists()
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()
    # The holders died without cleaning up: their locks are taken over, and said so.
    assert (run / LOCK_NAME).is_file() and (out / LOCK_NAME).is_file()
    res = runner.invoke(app, ["preprocess", str(cache), "-o", str(out)])
    assert f"Taking over the lock of {out} left by pid {holders[1].pid}" in res.stderr, res.stderr
    assert "no longer running" in res.stderr and not (out / LOCK_NAME).exists()
