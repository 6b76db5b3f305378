"""The commands' workspace defaults and the user config, with the engines replaced by a capture (no training)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()


class _Captured(Exception):
    def __init__(self, config: Any) -> None:
        super().__init__("engine called")
        self.config = config


def _capture(monkeypatch, target: str, args: list[str]) -> tuple[Any, str]:
    """(the engine's config, stderr) of ``cxr ARGS`` with the engine ``module:function`` replaced."""
    module, name = target.split(":")

    def engine(cfg: Any, *_: Any, **__: Any) -> Any:
        raise _Captured(cfg)

    monkeypatch.setattr(importlib.import_module(module), name, engine)
    result = runner.invoke(app, args)
    assert isinstance(result.exception, _Captured), f"cxr {args}: {result.output}"
    return result.exception.config, result.stderr


def _home() -> Path:
    return Path(os.environ["CXR_HOME"])


def _user_config(text: str) -> Path:
    path = _home() / "config.yaml"
    path.write_text(text)
    return path


def _cache(name: str) -> Path:
    path = _home() / "cache" / name
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def _run(kind: str, name: str, end: str) -> Path:
    path = _home() / "runs" / kind / name
    (path / "model").mkdir(parents=True)
    (path / "model" / "model.json").write_text("{}")
    (path / "run.json").write_text(json.dumps({"kind": kind, "status": "completed", "end_time": end}))
    return path


PREPROCESS = "cxr_tools.engine.preprocess:preprocess"


def test_user_config_is_below_config_file_and_flags(monkeypatch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _user_config("preprocess:\n  size: 64\n  crop: letterbox\nseed: 3\n")
    base = ["preprocess", str(src), "-o", str(tmp_path / "c")]
    cfg, _ = _capture(monkeypatch, PREPROCESS, base)
    assert (cfg.size, cfg.crop, cfg.seed) == (64, "letterbox", 3)
    file = tmp_path / "c.yaml"
    file.write_text("size: 128\ncrop: null\n")  # null: back to the built-in default
    cfg, _ = _capture(monkeypatch, PREPROCESS, [*base, "--config", str(file)])
    assert (cfg.size, cfg.crop, cfg.seed) == (128, "center", 3)
    cfg, _ = _capture(monkeypatch, PREPROCESS, [*base, "--config", str(file), "--size", "32"])
    assert cfg.size == 32


def test_a_bad_key_or_value_in_the_user_config_is_a_usage_error_naming_key_and_file(tmp_path):
    config = _user_config("preprocess:\n  sise: 64\n")
    result = runner.invoke(app, ["preprocess", str(tmp_path), "-o", str(tmp_path / "c")])
    assert result.exit_code == 2 and "sise" in result.stderr and str(config) in result.stderr
    _user_config("meta-train:\n  shots: many\n")
    result = runner.invoke(app, ["meta-train", str(tmp_path), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "shots" in result.stderr and str(config) in result.stderr


def test_preprocess_and_download_default_to_the_workspace(monkeypatch):
    cfg, err = _capture(monkeypatch, "cxr_tools.engine.download:download_synthetic", ["download", "synthetic"])
    assert cfg.dest == _home() / "data" / "synthetic" and str(cfg.dest) in err
    (_home() / "data" / "synthetic").mkdir(parents=True)
    cfg, err = _capture(monkeypatch, PREPROCESS, ["preprocess", "--size", "32", "--format", "memmap"])
    assert cfg.src == _home() / "data" / "synthetic"
    assert cfg.output == _home() / "cache" / "synthetic-32px-memmap" and f"Cache: {cfg.output}" in err
    cfg, _ = _capture(monkeypatch, PREPROCESS, ["preprocess", "synthetic"])  # by name
    assert cfg.output == _home() / "cache" / "synthetic-256px"
    (_home() / "data" / "nih").mkdir()
    result = runner.invoke(app, ["preprocess"])
    assert result.exit_code == 2 and "nih, synthetic" in result.stderr


def test_training_defaults_resume_the_same_run_and_refuse_an_ambiguous_cache(monkeypatch):
    cache = _cache("syn-32px")
    target = "cxr_tools.engine.meta_train:meta_train"
    first, err = _capture(monkeypatch, target, ["meta-train", "--shots", "7"])
    assert first.cache == cache and first.output.parent == _home() / "runs" / "meta-train"
    assert first.output.name.startswith("syn-32px-2w7s-") and f"Run directory: {first.output}" in err
    again, _ = _capture(monkeypatch, target, ["meta-train", "syn-32px", "--shots", "7", "--device", "cpu", "--quiet"])
    assert again.output == first.output and again.cache == first.cache == cache.resolve()
    other, _ = _capture(monkeypatch, target, ["meta-train", "--shots", "7", "--queries", "3"])
    assert other.output != first.output
    siamese, _ = _capture(monkeypatch, "cxr_tools.engine.train_siamese:train_siamese", ["train-siamese"])
    assert siamese.output.parent.name == "train-siamese" and siamese.output.name.startswith("syn-32px-resnet18-")
    _cache("nih-256px")
    result = runner.invoke(app, ["train", "-m", "conv4-tiny"])
    assert result.exit_code == 2 and "nih-256px, syn-32px" in result.stderr


def test_evaluate_uses_the_latest_run_or_a_runless_folder(monkeypatch):
    cache = _cache("syn-32px")
    target = "cxr_tools.engine.evaluate:evaluate"
    _run("train", "old", "2026-01-01T00:00:00+00:00")
    new = _run("meta-train", "new", "2026-02-01T00:00:00+00:00")
    cfg, err = _capture(monkeypatch, target, ["evaluate"])
    assert (cfg.run, cfg.data, cfg.output) == (new, cache, None) and str(new) in err  # the engine's RUN/eval
    cfg, _ = _capture(monkeypatch, target, ["evaluate", "old", "--data", "syn-32px"])
    assert cfg.run == _home() / "runs" / "train" / "old"
    cfg, _ = _capture(monkeypatch, target, ["evaluate", "--method", "pixels"])
    assert cfg.run is None and cfg.output.parent == _home() / "runs" / "evaluate"
    assert cfg.output.name.startswith("syn-32px-pixels-2w5s-")


def test_predict_model_precedence(monkeypatch, tmp_path):
    target = "cxr_tools.engine.predict:run_predict"
    args = ["predict", str(tmp_path), "-o", str(tmp_path / "out.csv")]
    latest = _run("train", "sup", "2026-01-01T00:00:00+00:00")
    _run("meta-train", "maml", "2026-02-01T00:00:00+00:00")  # newer, but cannot predict without --support
    cfg, err = _capture(monkeypatch, target, args)
    assert cfg.model == latest and "most recently completed" in err
    cfg, _ = _capture(monkeypatch, target, [*args, "--support", str(tmp_path)])
    assert cfg.model.name == "maml"
    _user_config(f"predict:\n  model: {tmp_path / 'from-user-config'}\n")
    cfg, err = _capture(monkeypatch, target, args)
    assert cfg.model == tmp_path / "from-user-config" and "user config" in err
    monkeypatch.setenv("CXR_MODEL", "sup")  # a run name
    cfg, err = _capture(monkeypatch, target, args)
    assert cfg.model == latest and "CXR_MODEL" in err
    cfg, err = _capture(monkeypatch, target, [*args, "--model", str(tmp_path / "flag")])
    assert cfg.model == tmp_path / "flag" and "--model" in err


def test_predict_without_any_usable_run_says_so(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 1 and "No --model given" in result.stderr and "--support" in result.stderr


def test_runs_on_an_empty_workspace():
    result = runner.invoke(app, ["runs"])
    assert result.exit_code == 0 and "Nothing yet" in result.stdout
    result = runner.invoke(app, ["ls", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["entries"] == []
    result = runner.invoke(app, ["runs", "--kind", "model"])
    assert result.exit_code == 1 and "--kind" in result.stderr


@pytest.mark.parametrize(("command", "blocked"), [("meta-train", "CXR_RUNS"), ("preprocess", "CXR_CACHE")])
def test_an_unwritable_home_is_one_line(command, blocked, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "data" / "d").mkdir(parents=True)  # one dataset and one cache to resolve
    (tmp_path / "cache" / "c").mkdir(parents=True)
    (tmp_path / "cache" / "c" / "manifest.json").write_text("{}")
    for var, folder in (("CXR_DATA", "data"), ("CXR_CACHE", "cache"), ("CXR_RUNS", "runs")):
        monkeypatch.setenv(var, str(tmp_path / folder))
    monkeypatch.setenv(blocked, str(blocker / "sub"))
    result = runner.invoke(app, [command])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and "not writable" in lines[-1] and lines[-1].startswith("Error"), result.output
