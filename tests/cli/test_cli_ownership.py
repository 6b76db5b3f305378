"""Ownership by record: ``--overwrite`` never touches a folder without cxr's marker (the user's own images and
dot-files survive every command, ``predict --cam`` included), and replacing an owned folder removes only what cxr
recorded writing there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from evaluate_factory import SPLIT_SPEC, make_eval_cache
from predict_fixtures import make_model_dir, phantom, write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.runtime.outputs import MARKER

runner = CliRunner()
EPISODES = ["--episodes", "2", "--shots", "1", "--queries", "1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny cache, a model folder, a few images, two evaluations and a benchmark plan (shared, read-only)."""
    root = tmp_path_factory.mktemp("ownership")
    cache = make_eval_cache(root, n=120)
    model = make_model_dir(root / "model", labels=("A", "B"), size=32)
    for i in range(3):
        write_png(root / "imgs" / f"x{i}.png", phantom(np.random.default_rng(i)))
    evals = [root / "eval-a", root / "eval-b"]
    for out in evals:
        res = runner.invoke(app, ["evaluate", "--method", "pixels", "--data", str(cache), "-o", str(out), *EPISODES])
        assert res.exit_code == 0, res.output
    plan = root / "plan.yaml"
    settings = {"shots": [1], "seeds": 1, "ways": 2, "queries": 1, "episodes": 2, "backbones": ["conv4-tiny"]}
    methods = {"device": "cpu", "methods": {"pixels": {}}, "reference": "pixels"}
    plan.write_text(yaml.safe_dump({"cache": str(cache), "output": str(root / "bench"), **settings, **methods}))
    # the report reads the plan's finished comparison: one written by `cxr compare` where the plan expects it
    res = runner.invoke(app, ["compare", *(str(e) for e in evals), "-o", str(root / "bench" / "compare" / "1shot")])
    assert res.exit_code == 0, res.output
    data = root / "data"
    res = runner.invoke(app, ["download", "synthetic", "-o", str(data), "--patients", "6", "--size", "32"])
    assert res.exit_code == 0, res.output
    return {"root": root, "data": data, "cache": cache, "model": model, "imgs": root / "imgs"} | {
        "evals": evals,
        "plan": plan,
    }


def _commands(inputs, out: Path) -> dict[str, list[str]]:
    cache, model, data = str(inputs["cache"]), str(inputs["model"]), str(inputs["data"])
    meta = ["--backbone", "conv4-tiny", "--meta-split", SPLIT_SPEC, "--engine", "func", "--shots", "1"]
    meta += ["--queries", "1", "--val-episodes", "0"]
    csv = str(inputs["root"] / "preds.csv")
    return {
        "preprocess": ["preprocess", data, "-o", str(out), "--size", "32", "--workers", "0"],
        "preprocess --merge": ["preprocess", cache, cache, "--merge", "-o", str(out)],
        "train": ["train", cache, "-o", str(out), "--model", "conv4-tiny"],
        "train-siamese": ["train-siamese", cache, "-o", str(out), "--backbone", "conv4-tiny"],
        "meta-train": ["meta-train", cache, "-o", str(out), *meta],
        "evaluate": ["evaluate", "--method", "pixels", "--data", cache, "-o", str(out), *EPISODES],
        "predict --cam": ["predict", str(inputs["imgs"]), "-o", csv, "-m", model, "--cam", str(out)],
        "compare": ["compare", *(str(e) for e in inputs["evals"]), "-o", str(out)],
        "benchmark report": ["benchmark", "report", str(inputs["plan"]), "-o", str(out)],
        "demo": ["demo", "-o", str(out), "--quick"],
        "download synthetic": ["download", "synthetic", "-o", str(out), "--patients", "2", "--size", "32"],
        "stats": ["stats", cache, "--out", str(out)],
    }


def _one_error(res, *needles: str) -> None:
    """Exit 1 with one error line naming each needle (progress and warning lines may precede it)."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def _users_folder(path: Path) -> dict[str, bytes]:
    """A folder of the user's own: 20 PNG images, a hidden notes file and a hidden folder."""
    for i in range(20):
        write_png(path / f"figure_{i:02d}.png", phantom(np.random.default_rng(100 + i), 24, 24))
    (path / ".notes").write_text("which figure goes where")
    (path / ".git").mkdir()
    (path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return _snapshot(path)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


COMMANDS = ["preprocess", "preprocess --merge", "train", "train-siamese", "meta-train", "evaluate", "predict --cam"]
COMMANDS += ["compare", "benchmark report", "demo", "download synthetic", "stats"]


@pytest.mark.parametrize("command", COMMANDS)
def test_overwrite_never_touches_a_folder_of_the_users_images(inputs, tmp_path, command):
    folder = tmp_path / "figs"
    before = _users_folder(folder)
    res = runner.invoke(app, [*_commands(inputs, folder)[command], *(["--overwrite"] if command != "stats" else [])])
    _one_error(res, str(folder), "is not a cxr", "never")
    assert _snapshot(folder) == before  # nothing deleted, changed or added (the lock is gone too)


def test_predict_cam_replaces_only_its_own_overlays(inputs, tmp_path):
    """The reported case, reversed: an overlay folder cxr wrote, to which the user added figures and notes."""
    figs, csv = tmp_path / "figs", tmp_path / "p.csv"
    args = ["predict", str(inputs["imgs"]), "-o", str(csv), "-m", str(inputs["model"]), "--cam", str(figs)]
    assert runner.invoke(app, [*args, "--cam-classes", "A"]).exit_code == 0
    overlays = sorted(p.name for p in figs.glob("0*.png"))
    assert len(overlays) == 3 and set(json.loads((figs / MARKER).read_text())["entries"]) == set(overlays)
    mine = _users_folder(figs / "mine")
    write_png(figs / "figure_a.png", phantom(np.random.default_rng(7), 24, 24))
    (figs / ".notes").write_text("keep me")
    res = runner.invoke(app, [*args, "--cam-classes", "B", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in figs.glob("0*.png")) == [n.replace("_A.png", "_B.png") for n in overlays]
    assert (figs / "figure_a.png").is_file() and (figs / ".notes").read_text() == "keep me"
    assert _snapshot(figs / "mine") == mine


@pytest.mark.parametrize("command", ["preprocess", "train", "evaluate", "download synthetic"])
def test_replacing_an_owned_folder_keeps_the_users_files_inside(inputs, tmp_path, command):
    out = tmp_path / "out"
    args = _commands(inputs, out)[command]
    if command == "train":
        args += ["--epochs", "1", "--batch-size", "8", "--threads", "1"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((out / MARKER).read_text())["command"] == command
    (out / "notes.txt").write_text("mine")
    (out / ".hidden").write_text("mine too")
    inner = [p / "my-figure.png" for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]  # cxr's
    for path in inner:
        path.write_bytes(b"not cxr's")
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine" and (out / ".hidden").read_text() == "mine too"
    assert all(path.read_bytes() == b"not cxr's" for path in inner)
    marker = json.loads((out / MARKER).read_text())
    assert "notes.txt" not in marker["entries"] and ".hidden" not in marker["entries"]
    assert not {str(path.relative_to(out)) for path in inner} & set(marker["entries"])
    assert bool(inner) == (command != "preprocess")  # a cache is flat; the others write folders of their own


def test_another_commands_output_is_refused_naming_it(inputs, tmp_path):
    out = tmp_path / "eval"
    assert runner.invoke(app, _commands(inputs, out)["evaluate"]).exit_code == 0
    res = runner.invoke(app, [*_commands(inputs, out)["preprocess"], "--overwrite"])
    _one_error(res, "written by `cxr evaluate`", "not a cache")
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize("side", ["p.thresholds.json", "p.csv.model.json"])
def test_predict_refuses_a_side_file_it_did_not_write(inputs, tmp_path, side):
    csv = tmp_path / "p.csv"
    (tmp_path / side).write_text('{"my": "settings"}')
    res = runner.invoke(app, ["predict", str(inputs["imgs"]), "-o", str(csv), "-m", str(inputs["model"])])
    _one_error(res, side, "is not a cxr side file")
    assert (tmp_path / side).read_text() == '{"my": "settings"}' and not csv.exists()
