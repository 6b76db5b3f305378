"""Resume after ``kill -9`` gives a cache identical to an uninterrupted run; overwrite/resume refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from interrupting_progress import Interrupt
from preprocess_fixtures import add_bad_inputs, assert_same_cache, make_nih

from cxr_tools.data.caches.format import is_complete
from cxr_tools.engine.preprocess import JOURNAL, PreprocessConfig, preprocess
from cxr_tools.errors import CacheError, InputError, OutputExistsError


def _journal_done(path) -> int:
    try:
        lines = (path / JOURNAL).read_bytes().split(b"\n")[1:-1]
    except FileNotFoundError:
        return 0
    done = 0
    for line in lines:
        try:
            done = json.loads(line)["done"]
        except (ValueError, KeyError):
            break
    return done


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_kill_9_then_resume_is_identical(tmp_path, storage):
    src = make_nih(tmp_path / "nih", patients=120, per_patient=3, size=64)
    add_bad_inputs(src)  # rejections before and after the kill point
    config = tmp_path / "cfg.yaml"
    config.write_text("preprocess:\n  commit_seconds: 0\n  chunk_size: 2\n")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cxr_tools", "preprocess", str(src), "-o", str(out), "--size", "32"]
    cmd += ["--format", storage, "--workers", "2", "--config", str(config), "--quiet"]
    proc = subprocess.Popen([*cmd, "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _journal_done(out) < 60 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _journal_done(out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not is_complete(out), "the run finished before it could be killed"
    assert 0 < killed_at < 360

    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 1 and "--resume" in refused.stderr and "incomplete" in refused.stderr

    resumed = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True)
    assert resumed.returncode == 3, resumed.stderr  # the bad inputs make it a partial success
    assert json.loads(resumed.stdout)["resumed_from"] >= killed_at
    assert not (out / JOURNAL).exists()

    clean = tmp_path / "clean"
    preprocess(PreprocessConfig(src=src, output=clean, size=32, format=storage, workers=0))
    assert_same_cache(out, clean)


def test_torn_journal_line_and_unjournaled_rows_are_redone(tmp_path):
    src = make_nih(tmp_path / "nih", patients=8, per_patient=3)
    out, clean = tmp_path / "c", tmp_path / "clean"
    cfg = PreprocessConfig(src=src, output=out, size=32, workers=0, chunk_size=5, commit_seconds=0, format="memmap")
    with pytest.raises(KeyboardInterrupt):
        preprocess(cfg, Interrupt("preprocess", 3, calls=True))
    assert not is_complete(out)
    lines = (out / JOURNAL).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["done"] == 10  # header + 2 commits; chunk 3 unjournaled
    with open(out / JOURNAL, "ab") as fh:
        fh.write(b'{"done": 20, "sto')  # a line torn by a crash
    arr = np.load(out / "images.npy", mmap_mode="r+")
    arr[10:] = 77  # rows written but never journaled may hold anything
    arr.flush()
    del arr
    result = preprocess(replace(cfg, resume=True))
    assert result.resumed_from == 10
    preprocess(PreprocessConfig(src=src, output=clean, size=32, workers=0, format="memmap"))
    assert_same_cache(out, clean)


def test_refusals(tmp_path):
    src = make_nih(tmp_path / "nih", patients=3, per_patient=2)
    out = tmp_path / "c"
    preprocess(PreprocessConfig(src=src, output=out, size=32, workers=0))
    with pytest.raises(OutputExistsError, match=r"already complete.*--overwrite"):
        preprocess(PreprocessConfig(src=src, output=out, size=32, workers=0))
    with pytest.raises(OutputExistsError, match="already complete"):
        preprocess(PreprocessConfig(src=src, output=out, size=32, workers=0, resume=True))
    again = preprocess(PreprocessConfig(src=src, output=out, size=48, workers=0, overwrite=True))
    assert again.image_size == 48

    (out / "manifest.json").unlink()
    with pytest.raises(OutputExistsError, match=r"incomplete.*--resume.*--overwrite"):
        preprocess(PreprocessConfig(src=src, output=out, size=48, workers=0))

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for flags in ({"resume": True}, {"overwrite": True}):  # a foreign folder is never deleted
        with pytest.raises(OutputExistsError, match="not a cxr cache"):
            preprocess(PreprocessConfig(src=src, output=foreign, size=32, workers=0, **flags))
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_resume_with_other_settings_is_refused(tmp_path):
    src = make_nih(tmp_path / "nih", patients=3, per_patient=2)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        preprocess(
            PreprocessConfig(src=src, output=out, size=32, workers=0, chunk_size=2, commit_seconds=0),
            Interrupt("preprocess", 2, calls=True),
        )
    with pytest.raises(CacheError, match="other inputs or settings"):
        preprocess(PreprocessConfig(src=src, output=out, size=48, workers=0, resume=True))
    # with --overwrite as well, a mismatching interrupted run is replaced
    result = preprocess(PreprocessConfig(src=src, output=out, size=48, workers=0, resume=True, overwrite=True))
    assert result.image_size == 48 and result.resumed_from == 0 and result.images == 6


def test_overwrite_keeps_the_old_cache_when_the_source_is_wrong(tmp_path):
    src = make_nih(tmp_path / "nih", patients=2, per_patient=2)
    out = tmp_path / "c"
    preprocess(PreprocessConfig(src=src, output=out, size=32, workers=0))
    with pytest.raises(InputError, match="does not exist"):
        preprocess(PreprocessConfig(src=tmp_path / "typo", output=out, size=32, workers=0, overwrite=True))
    assert is_complete(out)
