"""`cxr evaluate` looks through external weights: a run trained from TorchXRayVision's DenseNet (whose labels
taught every NIH meta-test class) is refused in one line on the phantom NIH-layout data, evaluated and marked
with --allow-leak; a run from torchvision ImageNet weights is accepted.

The weight files are written here in their upstream formats (tests/weight_files.py) where the loaders look for
them; nothing is downloaded (CXR_OFFLINE=1)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner
from weight_files import write_torchvision_weights, write_xrv_weights

from cxr_tools.cli.app import app
from cxr_tools.models.pretrained import IMAGENET_RESNET18, XRV_FILE

pytestmark = pytest.mark.slow  # trains a DenseNet-121 and a ResNet-18 for two steps each
torch.set_num_threads(1)
runner = CliRunner()
TRAIN = ["--classes", "base", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--threads", "1"]
EVAL = ["--episodes", "2", "--shots", "1", "--queries", "1", "--steps", "2", "--device", "cpu", "--no-plots"]
TEST_CLASSES = ("Cardiomegaly", "Edema", "Pneumothorax", "Consolidation", "Pneumonia")  # MetaChest meta-test


def _ok(res) -> None:
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The phantom written in NIH layout and preprocessed; one run trained from each kind of external weights."""
    tmp = tmp_path_factory.mktemp("leak_weights")
    mp = pytest.MonkeyPatch()
    mp.setenv("CXR_HOME", str(tmp / "home"))
    mp.setenv("TORCH_HOME", str(tmp / "torch_home"))
    mp.setenv("CXR_OFFLINE", "1")
    try:
        _ok(
            runner.invoke(
                app, ["download", "synthetic", "--dest", str(tmp / "syn"), "--patients", "60", "--size", "32"]
            )
        )
        cache = tmp / "cache"
        _ok(runner.invoke(app, ["preprocess", str(tmp / "syn"), "-o", str(cache), "--size", "32"]))
        write_xrv_weights(XRV_FILE)
        write_torchvision_weights("resnet18", IMAGENET_RESNET18.file_name)
        runs = {}
        for name, model, weights in (("xrv", "densenet121", "xrv"), ("imagenet", "resnet18", "imagenet")):
            runs[name] = tmp / name
            _ok(
                runner.invoke(
                    app, ["train", str(cache), "-o", str(runs[name]), "-m", model, "--weights", weights, *TRAIN]
                )
            )
        yield tmp, cache, runs
    finally:
        mp.undo()


def test_the_run_records_the_data_card_of_its_weights(env):
    _, _, runs = env
    lineage = json.loads((runs["xrv"] / "model" / "model.json").read_text())["lineage"]
    assert lineage["weights"]["title"] == "TorchXRayVision densenet121-res224-all"
    datasets = {d["dataset"] for d in lineage["weights"]["data"]}
    assert {"NIH ChestX-ray14", "CheXpert", "PadChest", "MIMIC-CXR (CheXpert labeller)"} <= datasets
    card = json.loads((runs["imagenet"] / "model" / "model.json").read_text())["lineage"]["weights"]
    assert [d["chest_xray"] for d in card["data"]] == [False] and not any(d["classes"] for d in card["data"])


def test_xrv_weights_are_refused_in_one_line_naming_weights_and_classes(env):
    _, cache, runs = env
    res = runner.invoke(app, ["evaluate", str(runs["xrv"]), "--data", str(cache), *EVAL])
    assert_one_line_error(
        res, "densenet121-res224-all", *TEST_CLASSES, "--weights imagenet", "--allow-leak", prefix="Error: Leak: "
    )
    assert not (runs["xrv"] / "eval").exists()


def test_allow_leak_evaluates_xrv_weights_and_marks_the_summary(env, tmp_path):
    _, cache, runs = env
    out = tmp_path / "e"
    res = runner.invoke(
        app, ["evaluate", str(runs["xrv"]), "--data", str(cache), *EVAL, "-o", str(out), "--allow-leak"]
    )
    _ok(res)
    assert "LEAK (--allow-leak)" in res.stdout and "densenet121-res224-all" in res.stdout
    leak = json.loads((out / "summary.json").read_text())["leak"]
    assert "TorchXRayVision densenet121-res224-all" in leak and all(c in leak for c in TEST_CLASSES)


def test_imagenet_weights_pass(env, tmp_path):
    _, cache, runs = env
    res = runner.invoke(
        app, ["evaluate", str(runs["imagenet"]), "--data", str(cache), *EVAL, "-o", str(tmp_path / "e")]
    )
    _ok(res)
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["leak"] is None and summary["lineage_notes"] == []
