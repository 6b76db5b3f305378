"""The CLI frame every command shares: version, exit codes, stderr/stdout split, config layering."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.testing import CliRunner

from cxr_tools import __version__
from cxr_tools.cli.app import app
from cxr_tools.cli.common import ConfigOpt, JsonOpt, build_config, emit, handle_errors
from cxr_tools.errors import InputError

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "cxr_tools", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_command_is_usage_error():
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


@dataclasses.dataclass(frozen=True)
class _Cfg:
    size: int = 256
    name: str = "x"
    path: Path = Path("a")
    lr: float = 0.1
    views: tuple[str, ...] = ()
    plots: bool = True


def _toy_app() -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    def run(
        size: Annotated[int, typer.Option(min=8)] = 256,
        name: str = "x",
        lr: float = 0.1,
        views: str = "PA",
        plots: Annotated[bool, typer.Option("--plots/--no-plots")] = True,
        path: Annotated[Path, typer.Option("--output", "-o")] = Path("a"),
        config: ConfigOpt = None,
        fail: str = "",
        json_output: JsonOpt = False,
    ) -> None:
        with handle_errors():
            if fail == "cxr":
                raise InputError("File x.png is missing.", "Check the path.")
            if fail == "kbd":
                raise KeyboardInterrupt
            cfg = build_config(_Cfg, size=size, name=name, path=path, lr=lr, views=tuple(views.split(",")), plots=plots)
        emit(cfg, json_output, lambda console: console.print(f"size={cfg.size} name={cfg.name}"))

    @toy.command()
    def other(cache: Annotated[Path, typer.Argument()], epochs: int = 1, config: ConfigOpt = None) -> None:
        print(f"cache={cache} epochs={epochs}")

    return toy


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_cxr_error_is_one_line_on_stderr_exit_1():
    result = runner.invoke(_toy_app(), ["run", "--fail", "cxr"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: File x.png is missing. Check the path."
    assert result.stdout == ""


def test_cxr_debug_prints_traceback(monkeypatch):
    monkeypatch.setenv("CXR_DEBUG", "1")
    result = runner.invoke(_toy_app(), ["run", "--fail", "cxr"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr


def test_interrupt_exits_130():
    assert runner.invoke(_toy_app(), ["run", "--fail", "kbd"]).exit_code == 130


def test_config_file_under_given_flags(tmp_path):
    cfg = _yaml(tmp_path, "size: 64\nname: from-yaml\nrun:\n  name: from-section\n")
    result = runner.invoke(_toy_app(), ["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "size=64 name=from-section" in result.stdout
    result = runner.invoke(_toy_app(), ["run", "--config", str(cfg), "--size", "32"])
    assert "size=32 name=from-section" in result.stdout
    result = runner.invoke(_toy_app(), ["run", "--size", "32", "--config", str(cfg)])  # order does not matter
    assert "size=32 name=from-section" in result.stdout


def _error(result) -> str:
    """The usage error's text without Typer's box and line breaks."""
    return " ".join(result.stderr.replace("│", " ").split())


def _json(args: list[str]) -> dict:
    import json

    result = runner.invoke(_toy_app(), [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_yaml_values_are_typed_as_the_flags(tmp_path):
    """The reported cases: a string float, a one-word list, a path, a bool, dashes in keys, the flag's name."""
    cfg = _yaml(tmp_path, "run:\n  lr: 1e-3\n  views: PA\n  output: out/dir\n  plots: false\n  size: 64\n")
    assert _json(["run", "--config", str(cfg)]) == {
        "size": 64, "name": "x", "path": "out/dir", "lr": 0.001, "views": ["PA"], "plots": False
    }  # fmt: skip
    assert _json(["run", "--lr", "1e-3", "--views", "PA", "-o", "out/dir", "--no-plots", "--size", "64"]) == _json(
        ["run", "--config", str(cfg)]
    )
    listed = _yaml(tmp_path, "views: [PA, AP]\nsize: '64'\n")
    assert _json(["run", "--config", str(listed)])["views"] == ["PA", "AP"]  # a YAML list is the comma form


def test_yaml_value_out_of_range_or_of_the_wrong_type_is_a_usage_error(tmp_path):
    for text, words in (("size: 4", "size"), ("run:\n  lr: fast", "lr"), ("size: 1.5", "size")):
        result = runner.invoke(_toy_app(), ["run", "--config", str(_yaml(tmp_path, text))])
        assert result.exit_code == 2, (text, result.output)
        assert words in _error(result) and "c.yaml" in _error(result)


def test_config_unknown_key_is_a_usage_error_with_the_closest_option(tmp_path):
    for text in ("run:\n  sise: 3\n", "sise: 3\n"):
        result = runner.invoke(_toy_app(), ["run", "--config", str(_yaml(tmp_path, text))])
        assert result.exit_code == 2, result.output
        assert "sise" in _error(result) and "c.yaml" in _error(result) and "'size'" in _error(result)


def test_top_level_keys_of_other_commands_are_ignored(tmp_path):
    """One file configures a pipeline: ``epochs`` belongs to ``other``, ``size`` to ``run``."""
    cfg = _yaml(tmp_path, "size: 64\nepochs: 3\nother:\n  cache: c\n")
    assert runner.invoke(_toy_app(), ["run", "--config", str(cfg)]).exit_code == 0
    result = runner.invoke(_toy_app(), ["other", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "cache=c epochs=3" in result.stdout  # a positional argument may come from the file
    assert "cache=d" in runner.invoke(_toy_app(), ["other", "d", "--config", str(cfg)]).stdout


def test_config_bad_yaml_and_missing_file(tmp_path):
    bad = _yaml(tmp_path, "size: [1,\n")
    result = runner.invoke(_toy_app(), ["run", "--config", str(bad)])
    assert result.exit_code == 2 and "not valid YAML" in _error(result)
    result = runner.invoke(_toy_app(), ["run", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "does not exist" in _error(result)


def test_json_output_is_parseable():
    assert _json(["run", "--size", "8"]) == {
        "size": 8, "name": "x", "path": "a", "lr": 0.1, "views": ["PA"], "plots": True
    }  # fmt: skip


def test_yaml_values_become_the_flag_text():
    """Lists, mappings and booleans are written as a user would type them after the flag."""
    from cxr_tools.config import cli_text

    assert cli_text(["PA", "AP"]) == "PA,AP"
    assert cli_text({"Effusion": 0.3, "Mass": 0.6}) == "Effusion=0.3,Mass=0.6"
    assert cli_text({"train": ["A", "B"], "val": ["C"], "test": "D"}) == "train=A,B;val=C;test=D"
    assert (cli_text(True), cli_text(1e-3), cli_text("1e-3")) == ("true", "0.001", "1e-3")
