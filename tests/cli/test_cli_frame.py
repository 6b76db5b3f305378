"""The CLI frame every command shares: version, exit codes, stderr/stdout split, config layering."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from cxr_tools import __version__
from cxr_tools.cli.app import app
from cxr_tools.cli.common import emit, handle_errors, make_config
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


def _toy_app() -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    def run(
        ctx: typer.Context,
        size: int = 256,
        name: str = "x",
        config: Path | None = typer.Option(None, "--config"),
        fail: str = "",
        json_output: bool = typer.Option(False, "--json"),
    ) -> None:
        with handle_errors():
            if fail == "cxr":
                raise InputError("File x.png is missing.", "Check the path.")
            if fail == "kbd":
                raise KeyboardInterrupt
            cfg = make_config(ctx, _Cfg, config, "run", size=size, name=name)
        emit(cfg, json_output, lambda console: console.print(f"size={cfg.size} name={cfg.name}"))

    @toy.command()
    def other() -> None:
        pass

    return toy


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
    cfg = tmp_path / "c.yaml"
    cfg.write_text("size: 64\nname: from-yaml\nrun:\n  name: from-section\n")
    result = runner.invoke(_toy_app(), ["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "size=64 name=from-section" in result.stdout
    result = runner.invoke(_toy_app(), ["run", "--config", str(cfg), "--size", "32"])
    assert "size=32 name=from-section" in result.stdout


def test_config_unknown_key_in_section_is_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run:\n  sise: 3\n")
    result = runner.invoke(_toy_app(), ["run", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "sise" in result.stderr


def test_config_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1,\n")
    assert "not valid YAML" in runner.invoke(_toy_app(), ["run", "--config", str(bad)]).stderr
    assert "does not exist" in runner.invoke(_toy_app(), ["run", "--config", str(tmp_path / "nope.yaml")]).stderr


def test_json_output_is_parseable():
    import json

    result = runner.invoke(_toy_app(), ["run", "--json", "--size", "8"])
    assert json.loads(result.stdout) == {"size": 8, "name": "x", "path": "a"}


def test_top_level_keys_of_other_commands_are_ignored():
    from cxr_tools import config

    picked = config.section({"size": 3, "epochs": 9, "run": {"name": "n"}}, "run", ["size", "name"])
    assert picked == {"size": 3, "name": "n"}
    built = config.build(_Cfg, {"size": 1, "name": "x"}, {"size"}, picked)
    assert built == _Cfg(size=1, name="n")
