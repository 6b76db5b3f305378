"""`cxr train` / `cxr train-siamese` from the command line: --json, --config layering, and bad inputs that
must end in one clear line and exit 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from cache_factory import make_cache, make_index
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.engine.train import TrainConfig
from cxr_tools.runtime.rundir import open_run

runner = CliRunner()
FAST = ["-m", "conv4-tiny", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    n = 32
    values = np.random.default_rng(0).choice([1.0, 0.0, -1.0], size=(n, 2), p=[0.4, 0.5, 0.1]).astype(np.float32)
    splits = ["train"] * 24 + ["val"] * 8
    index = make_index(n, ("A", "B"), values=values, splits=splits, patients=[f"p{i // 2}" for i in range(n)])
    return make_cache(tmp_path_factory.mktemp("cli-train"), labels=("A", "B"), index=index, size=32)


def _one_line_error(res, *needles):
    assert res.exit_code == 1, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_json_report_and_config_file_layering(cache, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"train": {"lr": 0.005, "uncertainty": "zeros", "batch_size": 4}}))
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cache), "-o", str(run), *FAST, "--config", str(conf), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "completed" and out["labels"] == ["A", "B"] and out["model_dir"] == str(run / "model")
    assert set(out["val_auc"]) == {"A", "B"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lr"] == 0.005 and saved["uncertainty"] == "zeros"  # from the YAML
    assert saved["batch_size"] == 8  # the flag given on the command line wins
    table = runner.invoke(app, ["train", str(cache), "-o", str(tmp_path / "t"), *FAST])
    assert table.exit_code == 0 and "val AUC" in table.stdout and "Model:" in table.stdout


def test_incomplete_cache_unknown_model_and_unknown_class_fail_clearly(cache, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    (broken / "manifest.json").unlink()
    _one_line_error(runner.invoke(app, ["train", str(broken), "-o", str(tmp_path / "a")]), "incomplete")
    res = runner.invoke(app, ["train", str(cache), "-o", str(tmp_path / "b"), "-m", "resnet81"])
    _one_line_error(res, "Unknown model 'resnet81'", "resnet18")
    res = runner.invoke(app, ["train", str(cache), "-o", str(tmp_path / "c"), *FAST, "--classes", "A,Zebra"])
    _one_line_error(res, "Zebra", "Its labels: A, B")
    res = runner.invoke(app, ["train", str(cache), "-o", str(tmp_path / "d"), *FAST, "--uncertainty", "maybe"])
    _one_line_error(res, "uncertainty policy 'maybe'")
    res = runner.invoke(app, ["train-siamese", str(cache), "-o", str(tmp_path / "e"), "--distance", "manhattan"])
    _one_line_error(res, "cosine, euclidean")
    res = runner.invoke(app, ["train-siamese", str(cache), "-o", str(tmp_path / "f"), "--backbone", "conv5"])
    _one_line_error(res, "Unknown model 'conv5'", "conv4")
    assert not (tmp_path / "b").exists() and not (tmp_path / "f").exists()  # nothing written on refusal


def test_run_directories_of_another_command_or_complete_ones_are_refused(cache, tmp_path):
    other = tmp_path / "siam"
    open_run(other, "train-siamese", {"cache": str(cache)}, command=["cxr", "train-siamese"])
    _one_line_error(runner.invoke(app, ["train", str(cache), "-o", str(other), *FAST]), "`cxr train-siamese`")
    done = tmp_path / "done"
    assert runner.invoke(app, ["train", str(cache), "-o", str(done), *FAST]).exit_code == 0
    _one_line_error(runner.invoke(app, ["train", str(cache), "-o", str(done), *FAST]), "--overwrite")
    again = runner.invoke(app, ["train", str(cache), "-o", str(done), *FAST, "--overwrite"])
    assert again.exit_code == 0, again.output


def test_an_incomplete_run_resumes_only_with_its_own_options(cache, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(cache=cache.resolve(), output=run, model="conv4-tiny", epochs=1, batch_size=8, threads=1)
    open_run(run, "train", cfg, command=["cxr", "train"])  # as left by a job killed before its first checkpoint
    res = runner.invoke(app, ["train", str(cache), "-o", str(run), *FAST, "--lr", "0.1"])
    _one_line_error(res, "different options", "lr")
    _one_line_error(
        runner.invoke(app, ["train", str(cache), "-o", str(run), *FAST, "--no-resume"]), "incomplete", "--resume"
    )
    res = runner.invoke(app, ["train", str(cache), "-o", str(run), *FAST, "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output  # workers may change between sessions
    assert json.loads(res.stdout)["status"] == "completed"
    assert json.loads((run / "run.json").read_text())["resumed"] == 1


@pytest.mark.parametrize("command", ["train", "train-siamese"])
@pytest.mark.parametrize(
    "flags",
    [
        ["--checkpoint-every-steps", "5", "--checkpoint-every-minutes", "2.5", "--log-every-steps", "3"],
        ["--checkpoint-every", "5", "--checkpoint-minutes", "2.5", "--log-every", "3"],  # old spellings, same options
    ],
)
def test_checkpoint_and_log_flags_share_the_trainers_vocabulary(monkeypatch, tmp_path, command, flags):
    import cxr_tools.engine.train as train_mod
    import cxr_tools.engine.train_siamese as siamese_mod

    seen = {}

    def fake(cfg, progress=None):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(train_mod, "train", fake)
    monkeypatch.setattr(siamese_mod, "train_siamese", fake)
    res = runner.invoke(app, [command, str(tmp_path / "c"), "-o", str(tmp_path / "r"), *flags])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.checkpoint_every_steps, cfg.checkpoint_every_minutes, cfg.log_every_steps) == (5, 2.5, 3)
