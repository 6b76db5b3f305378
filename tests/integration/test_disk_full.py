"""A full disk is one line and loses nothing: every command that writes, run onto a real, tiny tmpfs, exits 1 with
"No space left on <path>" (no traceback, no crash), keeps its last complete state, and finishes once space is freed.

Mounting needs root (CI runs the suite as root); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_factory import make_cache, make_index
from evaluate_factory import make_eval_cache, make_run
from integration.preprocess_fixtures import assert_same_cache, make_nih
from predict_fixtures import make_model_dir, phantom, write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app

torch.set_num_threads(1)
runner = CliRunner()
pytestmark = pytest.mark.slow  # each runs a command twice or three times (5-10 s)


class SmallDisk:
    """A tmpfs mounted at ``path``; :meth:`fill` leaves only so many bytes free, :meth:`grow` frees space."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast.bin"  # not inside any output: stands for the user's other files

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bfree * st.f_frsize

    def fill(self, leave: int) -> None:
        """Take all free space but ``leave`` bytes."""
        self.ballast.unlink(missing_ok=True)
        size = self.free() - leave
        with open(self.ballast, "wb") as fh:
            if size > 0:
                os.posix_fallocate(fh.fileno(), 0, size)

    def grow(self, size: str = "64m") -> None:
        self.ballast.unlink(missing_ok=True)
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield SmallDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def assert_no_space_line(returncode: int, stderr: str, where: Path) -> None:
    """Exit 1 and exactly one error line naming the full output, without a traceback."""
    assert returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert f"No space left on {where}" in errors[0], errors[0]


def _cxr(*args: object) -> subprocess.CompletedProcess[str]:
    """The real command in its own process: a crash (SIGSEGV) shows as a negative return code, not a dead pytest."""
    cmd = [sys.executable, "-m", "cxr_tools", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "CXR_QUIET": "1"})


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_preprocess_into_a_full_disk_is_one_line_and_resumes_to_the_same_cache(disk, tmp_path, storage):
    nih = make_nih(tmp_path / "nih", patients=40, per_patient=2, size=128)
    args = ["--size", "128", "--workers", "0", "--chunk-size", "4", "--commit-seconds", "0", "--format", storage]
    out = disk.path / "cache"
    full = _cxr("preprocess", nih, "-o", out, *args, "--quiet")  # 80 images of 128² = 1.25 MiB: cannot fit
    assert full.returncode >= 0, f"crashed with signal {-full.returncode}: {full.stderr}"
    assert_no_space_line(full.returncode, full.stderr, out)
    assert "--resume" in full.stderr and not (out / "manifest.json").exists()

    disk.grow()
    again = _cxr("preprocess", nih, "-o", out, *args, "--resume", "--quiet")
    assert again.returncode == 0, again.stderr
    reference = tmp_path / "reference"
    assert _cxr("preprocess", nih, "-o", reference, *args, "--quiet").returncode == 0
    assert_same_cache(out, reference)


@pytest.fixture
def train_cache(tmp_path):
    n = 32
    values = np.random.default_rng(0).choice([1.0, 0.0], size=(n, 2), p=[0.4, 0.6]).astype(np.float32)
    index = make_index(n, ("A", "B"), values=values, splits=["train"] * 24 + ["val"] * 8)
    return make_cache(tmp_path, labels=("A", "B"), index=index, size=32)


def test_a_checkpoint_that_does_not_fit_keeps_the_last_one_and_the_rerun_finishes(disk, train_cache, tmp_path):
    common = ["-m", "conv4-tiny", "--epochs", "3", "--batch-size", "8", "--threads", "1", "--quiet"]
    sizing = runner.invoke(app, ["train", str(train_cache), "-o", str(tmp_path / "s"), *common, "--max-steps", "1"])
    assert sizing.exit_code == 0, sizing.output
    checkpoint = (tmp_path / "s" / "checkpoints" / "last.pt").stat().st_size  # ~56 KiB today
    run = disk.path / "run"
    args = ["train", train_cache, "-o", run, *common, "--checkpoint-every-steps", "1"]
    # the run's small files and one last.pt fit, a second one written beside it does not
    disk.fill(int(1.6 * checkpoint) + 16 * 1024)
    res = runner.invoke(app, list(map(str, args)))
    assert_no_space_line(res.exit_code, res.stderr, run)
    assert json.loads((run / "run.json").read_text())["status"] != "completed"
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["step"] >= 1  # the last complete checkpoint is whole
    assert not list((run / "checkpoints").glob(".*.tmp"))

    disk.grow()
    res = runner.invoke(app, list(map(str, args)))
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"] == 1 and (run / "model" / "model.json").is_file()


def test_evaluate_predict_and_compare_into_a_full_disk(disk, tmp_path):
    cache = make_eval_cache(tmp_path, n=80)
    maml, sup = make_run(tmp_path, cache, "maml"), make_run(tmp_path, cache, "supervised")
    fast = ["--episodes", "2", "--shots", "2", "--queries", "2", "--device", "cpu", "--no-plots", "--steps", "1"]
    evaluate = ["evaluate", str(maml), "--data", str(cache), "-o", str(disk.path / "ev"), *fast]
    images = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(images / f"{i}.png", phantom(rng, 32, 32))
    model = make_model_dir(tmp_path / "m" / "model")
    predict = ["predict", str(images), "-o", str(disk.path / "p.csv"), "--model", str(model), "-b", "2"]
    for run in (maml, sup):  # two evaluations on the normal disk, to compare onto the full one
        res = runner.invoke(app, ["evaluate", str(run), "--data", str(cache), *fast])
        assert res.exit_code == 0, res.output
    compare = ["compare", str(maml / "eval"), str(sup / "eval"), "-o", str(disk.path / "cmp")]

    # predict's line names the CSV or its side file p.thresholds.json, whichever the full disk stopped first
    for args, where in ((evaluate, disk.path / "ev"), (predict, disk.path / "p."), (compare, disk.path / "cmp")):
        disk.fill(4096)  # room for the output's lock file (one page), none for what the command writes
        res = runner.invoke(app, args)
        assert_no_space_line(res.exit_code, res.stderr, where)
    assert not (disk.path / "ev" / "summary.json").exists() and not (disk.path / "p.csv").exists()
    assert not (disk.path / "cmp" / "comparison.csv").exists()

    disk.grow()
    for args in (evaluate, predict, compare):  # the same commands, once space is freed
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    assert json.loads((disk.path / "ev" / "summary.json").read_text())["episodes"] == 2
    assert len((disk.path / "p.csv").read_text().splitlines()) == 4


def test_an_hdf5_store_whose_metadata_cannot_fit_is_refused_before_hdf5_writes_anything(disk):
    """HDF5 cannot survive failing to write its own metadata (it crashes at exit), so its room is checked first."""
    from cxr_tools.data.caches.format import ImageStoreWriter
    from cxr_tools.errors import NoSpaceError

    out = disk.path / "c"
    out.mkdir()
    disk.fill(64 * 1024)
    with pytest.raises(NoSpaceError, match=r"MiB free, about .* MiB needed"):
        ImageStoreWriter(out, "hdf5", 20_000, 64, 64)  # its chunk index alone takes about 2.5 MiB
    assert not (out / "images.h5").exists()
    disk.grow()
    with ImageStoreWriter(out, "hdf5", 20_000, 64, 64) as store:
        store.write_block(19_999, np.full((1, 64, 64), 7, np.uint8))
