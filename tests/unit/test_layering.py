"""Architecture rules of docs/design.md (section 1, "Layers"), checked on the source so a violation fails CI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "cxr_tools"
HEAVY = ("torch", "torchvision", "cv2", "h5py", "sklearn", "learn2learn", "higher", "pandas", "matplotlib")
HEAVY += ("gradio", "captum")  # cxr app, Grad-CAM


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def test_only_cli_imports_typer_or_rich():
    offenders = []
    for path in _modules():
        if path.relative_to(PKG).parts[0] == "cli":
            continue
        for name in _imports(path):
            if name.split(".")[0] in {"typer", "rich", "click"}:
                offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, offenders


def test_nobody_imports_click():
    offenders = [p for p in _modules() if any(n.split(".")[0] == "click" for n in _imports(p))]
    assert not offenders


BASE = {"config", "errors", "paths", "vocabulary"}
#: What each layer may import of ours (docs/design.md, "Layers"): one way down, function-level imports included.
#: eval/ is a leaf of pure statistics and plots that any layer may use; data and models are siblings.
ALLOWED: dict[str, set[str]] = {
    "engine": {"benchmark", "webapp", "methods", "models", "data", "workspace", "eval", "runtime", *BASE},
    "benchmark": {"eval", "runtime", *BASE},
    "webapp": {"methods", "models", "data", "workspace", "eval", "runtime", *BASE},
    "methods": {"models", "data", "workspace", "eval", "runtime", *BASE},
    "models": {"eval", "runtime", *BASE},
    "data": {"eval", "runtime", *BASE},
    "workspace": {"runtime", *BASE},
    "eval": {"runtime", "config", "errors"},
    "runtime": {"config", "errors", "paths"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_one_way(layer):
    offenders = []
    for path in (PKG / layer).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "cxr_tools" and len(parts) > 1 and parts[1] not in {layer, *ALLOWED[layer]}:
                offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, offenders


def test_every_package_has_a_layer():
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"cli"} == set(ALLOWED)


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {m.split(".")[0] for m in out.stdout.split()}


HELP_ALL = """
import typer
from typer.testing import CliRunner
from cxr_tools.cli.app import app

runner = CliRunner()
seen = []


def walk(cmd, path):
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, (path, res.output)
    seen.append(" ".join(path))
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        walk(sub, [*path, name])


walk(typer.main.get_command(app), [])
print("HELP:" + "|".join(seen))
"""


def test_help_of_every_command_does_not_import_heavy_libraries():
    out = subprocess.run(
        [sys.executable, "-c", HELP_ALL + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    helped = next(line for line in out.stdout.splitlines() if line.startswith("HELP:"))
    assert "download synthetic" in helped  # nested commands were walked
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    heavy = loaded & set(HEAVY)
    assert not heavy, f"`cxr ... --help` imported {sorted(heavy)}"


# Pipelines that compose whole commands may call other engines' public functions; nothing else may. A command's
# own package (engine/evaluate/, engine/compare/) imports its modules freely.
ENGINE_COMPOSERS = {"demo.py", "benchmark.py"}


def test_no_engine_module_imports_another_except_pipelines():
    offenders = []
    for path in sorted((PKG / "engine").rglob("*.py")):
        if path.name in ENGINE_COMPOSERS and path.parent.name == "engine":
            continue
        rel = path.relative_to(PKG / "engine")
        own = "cxr_tools.engine." + (rel.parts[0] if len(rel.parts) > 1 else rel.stem)
        for name in _imports(path):
            if name.startswith("cxr_tools.engine") and name != own and not name.startswith(own + "."):
                offenders.append(f"engine/{rel} imports {name}")
    assert not offenders, offenders


def test_no_code_is_packed_to_fit():
    """No line-count rule: responsibilities decide a module's size, and ``# fmt: skip`` never packs code."""
    assert not [str(p.relative_to(PKG)) for p in _modules() if "# fmt: skip" in p.read_text(encoding="utf-8")]
