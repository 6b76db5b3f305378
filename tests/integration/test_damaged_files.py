"""Damaged files name themselves: a truncated or bit-flipped cache store, index, checkpoint or model file is one
line naming the file and what to do, never a traceback or a silently wrong result; `cxr stats --verify` checks a
cache against the checksums recorded when it was written."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from cache_factory import make_cache, make_index
from cli_helpers import assert_one_line_error
from predict_fixtures import make_model_dir, phantom, write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import CHECKSUM_BLOCK_ROWS, STORE_FILES, _npy_layout, open_cache
from cxr_tools.errors import CacheError, ModelError
from cxr_tools.runtime import checkpointing as ckpt

torch.set_num_threads(1)
runner = CliRunner()


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _pixel_offset(cache, storage: str, row: int) -> int:
    store = cache / STORE_FILES[storage]
    if storage == "hdf5":
        with h5py.File(store, "r") as fh:
            return int(fh["images"].id.get_chunk_info_by_coord((row, 0, 0)).byte_offset) + 100
    shape, offset = _npy_layout(store)
    return offset + row * shape[1] * shape[2] + 100


def _verify(cache):
    return runner.invoke(app, ["stats", str(cache), "--verify"])


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_verify_names_a_bit_flipped_store_block_and_a_truncated_store(tmp_path, storage):
    n = CHECKSUM_BLOCK_ROWS + 20  # two checksum blocks
    cache = make_cache(tmp_path, n, storage=storage, size=16)
    whole = _verify(cache)
    assert whole.exit_code == 0 and f"every file matches its checksums ({n} images)" in whole.stdout, whole.output

    _flip(cache / STORE_FILES[storage], _pixel_offset(cache, storage, CHECKSUM_BLOCK_ROWS + 3))
    res = _verify(cache)
    assert res.exit_code == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Damaged: ") and "Traceback" not in res.stderr, res.stderr
    assert str(cache / STORE_FILES[storage]) in lines[0]
    assert f"rows {CHECKSUM_BLOCK_ROWS}-{n - 1}" in lines[0] and "1 of 2 blocks" in lines[0]

    store = cache / STORE_FILES[storage]
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])  # truncated: a copy cut short
    res = _verify(cache)
    assert res.exit_code == 1 and str(store) in res.stderr and "Traceback" not in res.stderr, res.stderr
    args = ["train", str(cache), "-o", str(tmp_path / "run"), "-m", "conv4-tiny", "--epochs", "1"]
    res = runner.invoke(app, args)  # a command reading the images: one line naming the store
    assert_one_line_error(res, str(store), "--verify")


def test_an_edited_index_is_refused_when_read_and_named_by_verify(tmp_path):
    index = make_index(40, ("A", "B"), values=np.zeros((40, 2)))
    cache = make_cache(tmp_path, index=index, labels=("A", "B"), size=16)
    text = (cache / "index.csv").read_text()
    (cache / "index.csv").write_text(text.replace(",0.0,0.0\n", ",1.0,0.0\n", 1))  # one label flipped: parses fine
    with pytest.raises(CacheError, match=r"index\.csv does not match the checksum"):
        open_cache(cache)
    assert_one_line_error(runner.invoke(app, ["stats", str(cache)]), "index.csv", "--verify")
    res = _verify(cache)
    assert res.exit_code == 1 and res.stderr.count("Damaged: ") == 1 and "index.csv" in res.stderr, res.stderr


def test_a_cache_without_checksums_says_it_cannot_be_verified(tmp_path):
    cache = make_cache(tmp_path, 8, size=16)
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["checksums"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(_verify(cache), "records no checksums", "--overwrite")
    assert len(open_cache(cache)) == 8  # still readable as before


def _save(path, model, opt, step):
    return ckpt.save_training_state(path, model, opt, None, None, step=step, epoch=0)


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_a_damaged_last_checkpoint_names_its_whole_predecessor(tmp_path, damage):
    model = torch.nn.Linear(64, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    last = tmp_path / "last.pt"
    _save(last, model, opt, 1)
    with pytest.raises(ModelError, match="No earlier checkpoint is kept: rerun with --overwrite"):
        size = last.stat().st_size
        _flip(last, size // 2) if damage == "bitflip" else last.write_bytes(last.read_bytes()[: size // 2])
        ckpt.load_training_state(last)
    _save(last, model, opt, 1)
    with torch.no_grad():
        model.weight.add_(1.0)
    _save(last, model, opt, 2)  # keeps the step-1 checkpoint as last.prev.pt
    size = last.stat().st_size
    if damage == "bitflip":
        _flip(last, size // 2)  # lands in a tensor: torch.load alone would read it without a word
    else:
        last.write_bytes(last.read_bytes()[: size // 2])
    with pytest.raises(ModelError) as info:
        ckpt.load_training_state(last)
    message = str(info.value)
    assert str(last) in message and "damaged" in message and "\n" not in message
    assert "last.prev.pt (step 1) is whole" in message and f"mv {tmp_path / 'last.prev.pt'} {last}" in message
    shutil.move(tmp_path / "last.prev.pt", last)  # what the message says to do
    assert ckpt.load_training_state(last)["step"] == 1


def test_an_interrupted_run_with_a_damaged_last_pt_resumes_from_the_previous_one(tmp_path):
    n = 32
    values = np.random.default_rng(0).choice([1.0, 0.0], size=(n, 2), p=[0.4, 0.6]).astype(np.float32)
    index = make_index(n, ("A", "B"), values=values, splits=["train"] * 24 + ["val"] * 8)
    cache = make_cache(tmp_path, labels=("A", "B"), index=index, size=32)
    run = tmp_path / "run"
    args = ["train", str(cache), "-o", str(run), "-m", "conv4-tiny", "--epochs", "2", "--batch-size", "8"]
    args += ["--threads", "1", "--checkpoint-every-steps", "1", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))  # as if stopped before the end
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    res = runner.invoke(app, args)
    assert_one_line_error(res, str(last), "last.prev.pt", "mv ")
    shutil.move(run / "checkpoints" / "last.prev.pt", last)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_a_damaged_model_file_is_named_by_predict(tmp_path, damage):
    model = make_model_dir(tmp_path / "run" / "model")
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    if damage == "bitflip":
        _flip(weights, size - 50)
    else:
        weights.write_bytes(weights.read_bytes()[: size // 2])
    write_png(tmp_path / "imgs" / "a.png", phantom(np.random.default_rng(0), 32, 32))
    res = runner.invoke(app, ["predict", str(tmp_path / "imgs"), "-o", str(tmp_path / "p.csv"), "-m", str(model)])
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert res.exit_code == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(weights) in errors[0] and "damaged" in errors[0], errors[0]
    assert not (tmp_path / "p.csv").exists()
