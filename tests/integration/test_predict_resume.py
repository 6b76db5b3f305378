"""`cxr predict` interrupted mid-run: rows already scored are kept, a rerun resumes and ends with the same file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupting_progress import Interrupt
from predict_fixtures import make_mixed_folder, make_model_dir, phantom, write_png

from cxr_tools.engine.predict import PredictConfig, run_predict
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.progress import RecordingProgress

torch.set_num_threads(1)


@pytest.fixture
def setup(tmp_path):
    folder = make_mixed_folder(tmp_path / "imgs")
    rng = np.random.default_rng(5)
    for i in range(20):
        write_png(tmp_path / "imgs" / "more" / f"m{i:02d}.png", phantom(rng))
    model = make_model_dir(tmp_path / "run" / "model")
    reference = tmp_path / "reference.csv"
    run_predict(PredictConfig(input=tmp_path / "imgs", output=reference, model=model, batch_size=4, threshold="0.5"))
    return tmp_path, folder, model, reference


def _config(tmp_path: Path, model: Path, **kw) -> PredictConfig:
    base = {"input": tmp_path / "imgs", "output": tmp_path / "out.csv", "model": model, "batch_size": 4}
    return PredictConfig(**{**base, "threshold": "0.5", **kw})


def _partial(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def test_interrupted_run_keeps_rows_and_a_rerun_resumes_to_the_same_file(setup):
    tmp_path, _, model, reference = setup
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        run_predict(_config(tmp_path, model), Interrupt("predict", after=12))
    assert not out.exists(), "an incomplete output must never sit at the output path"
    kept = _partial(out).read_text().splitlines()
    assert 1 + 8 <= len(kept) < 1 + 27, "the rows scored before the interruption are on disk"
    assert kept == reference.read_text().splitlines()[: len(kept)]

    progress = RecordingProgress()
    res = run_predict(_config(tmp_path, model), progress)
    assert out.read_bytes() == reference.read_bytes()
    assert res.n_resumed == len(kept) - 1
    assert (res.n_inputs, res.n_ok, res.n_failed) == (27, 25, 2)
    assert {p for p, _ in res.failures} == {str(tmp_path / "imgs" / n) for n in ("e_broken.png", "f_notes.png")}
    assert progress.done("predict") == 27
    assert not _partial(out).exists() and not out.with_name(".out.csv.partial.json").exists()


def test_a_row_cut_mid_write_is_scored_again(setup):
    tmp_path, _, model, reference = setup
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        run_predict(_config(tmp_path, model), Interrupt("predict", after=8))
    with open(_partial(out), "a") as fh:  # what kill -9 during a write can leave
        fh.write("/some/half/written/pa")
    run_predict(_config(tmp_path, model))
    assert out.read_bytes() == reference.read_bytes()


def test_other_settings_refuse_to_resume_and_no_resume_starts_over(setup):
    tmp_path, _, model, _ = setup
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        run_predict(_config(tmp_path, model), Interrupt("predict", after=8))
    with pytest.raises(OutputExistsError, match=r"other settings \(thresholds differ\)") as info:
        run_predict(_config(tmp_path, model, threshold="0.3"))
    assert "--no-resume" in (info.value.hint or "")
    other = make_model_dir(tmp_path / "other" / "model", seed=1)
    with pytest.raises(OutputExistsError, match="model, weights differ"):
        run_predict(_config(tmp_path, other))
    res = run_predict(_config(tmp_path, model, threshold="0.3", resume=False))
    assert res.n_resumed == 0
    reference_03 = tmp_path / "ref03.csv"
    run_predict(_config(tmp_path, model, threshold="0.3", output=reference_03))
    assert out.read_bytes() == reference_03.read_bytes()


def test_a_changed_input_list_is_refused_and_no_resume_starts_over(setup):
    tmp_path, _, model, _ = setup
    with pytest.raises(KeyboardInterrupt):
        run_predict(_config(tmp_path, model), Interrupt("predict", after=8))
    write_png(tmp_path / "imgs" / "0_new.png", phantom(np.random.default_rng(9)))
    with pytest.raises(OutputExistsError, match="inputs, inputs_sha256 differ"):
        run_predict(_config(tmp_path, model))
    res = run_predict(_config(tmp_path, model, resume=False))
    assert res.n_resumed == 0 and res.n_inputs == 28


def test_kill_9_then_the_same_command_completes_the_file(setup):
    """The real thing: SIGKILL a `cxr predict` process once rows are on disk, run the same command again."""
    tmp_path, _, model, _ = setup
    out = tmp_path / "out.csv"
    for i in range(400):  # enough work that the kill lands mid-run
        write_png(tmp_path / "imgs" / "zz" / f"z{i:03d}.png", phantom(np.random.default_rng(i)))
    full = tmp_path / "full.csv"
    cmd = [sys.executable, "-m", "cxr_tools", "predict", str(tmp_path / "imgs"), "--model", str(model)]
    cmd += ["--batch-size", "1", "--workers", "0", "--threshold", "0.5", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, "-o", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if _partial(out).exists() and _partial(out).read_text().count("\n") >= 30:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip(f"predict finished (rc {proc.returncode}) before it could be killed on this machine")
    assert not out.exists()
    rerun = subprocess.run([*cmd, "-o", str(out), "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 3, rerun.stderr  # the two broken files
    assert json.loads(rerun.stdout)["n_resumed"] >= 29
    done = subprocess.run([*cmd, "-o", str(full)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert out.read_bytes() == full.read_bytes()


def test_out_of_memory_names_the_batch_size_and_keeps_the_rows(setup, monkeypatch):
    """The scorer's allocation fails for real (a 2 TB request) after the first batches: a clear error, rows kept."""
    from cxr_tools.errors import ResourceError
    from cxr_tools.methods import scoring

    tmp_path, _, model, reference = setup
    real_call, calls = scoring.RunScorer.__call__, {"n": 0}

    def failing(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            torch.empty(2 * 10**12, dtype=torch.uint8)
        return real_call(self, images)

    monkeypatch.setattr(scoring.RunScorer, "__call__", failing)
    with pytest.raises(ResourceError, match=r"batches of 4 images .* Lower --batch-size"):
        run_predict(_config(tmp_path, model))
    monkeypatch.setattr(scoring.RunScorer, "__call__", real_call)
    res = run_predict(_config(tmp_path, model))
    assert res.n_resumed >= 8
    assert (tmp_path / "out.csv").read_bytes() == reference.read_bytes()
