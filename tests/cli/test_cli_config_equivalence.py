"""Every option of every command, set once by flag and once by ``--config`` YAML, gives the engine the same config.

Generated from the app's parameters: sample values come from each parameter's type (and range), so a new option
is covered without touching this file, and a new command fails here until it is listed in ``ENGINES``.
"""

from __future__ import annotations

import importlib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import leaf_commands
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()

# Command -> the engine function its body calls (imported inside the body, so patching the module attribute works).
ENGINES = {
    "demo": "cxr_tools.engine.demo:run_demo",
    "preprocess": "cxr_tools.engine.preprocess:preprocess",
    "models": "cxr_tools.engine.models:list_zoo",
    "stats": "cxr_tools.engine.stats:run_stats",
    "meta-train": "cxr_tools.engine.meta_train:meta_train",
    "evaluate": "cxr_tools.engine.evaluate:evaluate",
    "compare": "cxr_tools.engine.compare:compare",
    "train": "cxr_tools.engine.train:train",
    "train-siamese": "cxr_tools.engine.train_siamese:train_siamese",
    "predict": "cxr_tools.engine.predict:run_predict",
    "similarity": "cxr_tools.engine.similarity:run_similarity",
    "app": "cxr_tools.webapp.server:serve",
    "download synthetic": "cxr_tools.engine.download:download_synthetic",
    "download nih": "cxr_tools.engine.download:download_nih",
    "download kaggle": "cxr_tools.engine.download:download_kaggle",
    "download chexpert": "cxr_tools.engine.download:download_chexpert",
    "runs": "cxr_tools.engine.runs:list_runs",
    "ls": "cxr_tools.engine.runs:list_runs",
    "benchmark run": "cxr_tools.engine.benchmark:run_benchmark",
    "benchmark status": "cxr_tools.engine.benchmark:benchmark_status",
    "benchmark report": "cxr_tools.engine.benchmark:benchmark_report",
}

# Values the command body parses itself, or that pick another code path, by (command, parameter).
OVERRIDES: dict[tuple[str, str], Any] = {
    ("preprocess", "merge"): False,  # --merge builds a MergeConfig of its own (tests/cli/test_cli_preprocess.py)
    ("stats", "verify"): False,  # --verify checks checksums instead (tests/integration/test_damaged_files.py)
    ("preprocess", "src"): ["src_path"],  # one dataset directory without --merge
    ("preprocess", "fractions"): "0.5,0.25,0.25",
    ("download nih", "parts"): "1,3-4",
    ("download nih", "checksums"): "images_001.tar.gz=0a1b,images_002.tar.gz=2c3d",
    ("evaluate", "threshold"): "0.3",  # a rule: support, a probability or none
    ("predict", "threshold"): "0.3",
    ("app", "auth"): "user:pass",  # USER:PASS, checked by AppConfig
    # --dry-run plans instead of running (tests/cli/test_cli_estimate.py)
    **{(command, "dry_run"): False for command in ("train", "train-siamese", "meta-train", "evaluate")},
}
# Values written in YAML's own form where the flag takes a text: the file must give the same config.
YAML_FORMS: dict[tuple[str, str], Any] = {
    ("download nih", "checksums"): {"images_001.tar.gz": "0a1b", "images_002.tar.gz": "2c3d"},
    ("download nih", "parts"): [1, "3-4"],
    ("evaluate", "threshold"): 0.3,  # YAML's number is the same rule as the flag's text
}


class _Captured(Exception):
    def __init__(self, config: Any) -> None:
        super().__init__("engine called")
        self.config = config


def _base_type(annotation: Any) -> Any:
    """``Annotated[int | None, ...]`` -> ``int``; ``list[Path]`` stays a list type."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return args[0]
    return annotation


def _number(param: Any, kind: type) -> Any:
    low = param.min if param.min is not None else 0
    value = kind(low) + (3 if kind is int else kind(0.25))
    if value == param.default:
        value += 1
    assert param.max is None or value <= param.max, f"no sample for {param.name}"
    return value


def _sample(path: str, param: Any, annotation: Any) -> Any:
    if (path, param.name) in OVERRIDES:
        return OVERRIDES[(path, param.name)]
    kind = _base_type(annotation)
    if typing.get_origin(kind) is list:
        return [f"{param.name}_1", f"{param.name}_2"]
    if kind is bool:
        return not param.default
    if kind in (int, float):
        return _number(param, kind)
    if kind is Path:
        return f"{param.name}_path"
    assert kind is str, f"no sample value for {path} {param.name}: {kind}"
    return f"{param.name}-x"


def _flag_args(param: Any, value: Any) -> list[str]:
    if param.param_type_name == "argument":
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if getattr(param, "is_bool_flag", False):
        return [param.opts[0]] if value else param.secondary_opts[:1]  # False without --no-X: the default
    values = value if isinstance(value, list) else [value]
    return [item for v in values for item in (param.opts[0], str(v))]


def _yaml_key(param: Any) -> str:
    """Flags' own spelling (``batch-size``, ``json``) where there is one: both kinds of key must work."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0][2:] if longs else param.name


def _capture(monkeypatch: pytest.MonkeyPatch, path: str, args: list[str]) -> Any:
    module, name = ENGINES[path].split(":")

    def engine(cfg: Any, *_: Any, **__: Any) -> Any:
        raise _Captured(cfg)

    monkeypatch.setattr(importlib.import_module(module), name, engine)
    result = runner.invoke(app, [*path.split(), *args])
    assert isinstance(result.exception, _Captured), f"cxr {path} {args}: {result.output}"
    return result.exception.config


def test_every_command_is_covered():
    assert set(leaf_commands()) == set(ENGINES)


@pytest.mark.parametrize("path", sorted(ENGINES))
def test_flags_and_yaml_give_the_same_config(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = leaf_commands()[path]
    hints = typing.get_type_hints(command.callback, include_extras=True)
    flags: list[str] = []
    positional: list[str] = []
    section: dict[str, Any] = {}
    for param in command.params:
        if not param.expose_value or param.is_eager or param.name == "config":
            continue
        value = _sample(path, param, hints[param.name])
        (positional if param.param_type_name == "argument" else flags).extend(_flag_args(param, value))
        section[_yaml_key(param)] = YAML_FORMS.get((path, param.name), value)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({path.split()[-1]: section}))

    by_flags = _capture(monkeypatch, path, [*positional, *flags])
    by_yaml = _capture(monkeypatch, path, ["--config", str(config_file)])
    assert by_yaml == by_flags


# Engine settings with no option, so no config key: tuning knobs the tests set on the dataclass directly.
ENGINE_ONLY_FIELDS = {
    "download nih": "backoff_max and retry_seed",
    "download chexpert": "backoff_max and retry_seed; its source is --from",
}


@pytest.mark.parametrize("path", sorted(set(ENGINES) - set(ENGINE_ONLY_FIELDS)))
def test_a_saved_config_is_a_valid_config_file(path, tmp_path, monkeypatch):
    """A resolved config saved as YAML (RUN/config.yaml of a trainer) given back as --config gives the same config."""
    from cxr_tools.config import dump_yaml

    monkeypatch.chdir(tmp_path)
    command = leaf_commands()[path]
    hints = typing.get_type_hints(command.callback, include_extras=True)
    args: list[str] = []
    for param in command.params:
        if param.expose_value and not param.is_eager and param.name not in ("config", "json_output", "quiet"):
            args.extend(_flag_args(param, _sample(path, param, hints[param.name])))
    by_flags = _capture(monkeypatch, path, args)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(by_flags))
    assert _capture(monkeypatch, path, ["--config", str(saved)]) == by_flags
