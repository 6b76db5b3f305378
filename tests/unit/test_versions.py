"""Every third-party module the package imports is a declared dependency, and the library versions that change a
result (one list, runtime/versions.py) are recorded in run.json and in an evaluation's summary.json."""

from __future__ import annotations

import ast
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
from evaluate_factory import make_eval_cache, make_run
from typer.testing import CliRunner

import cxr_tools
from cxr_tools.cli.app import app
from cxr_tools.runtime.rundir import open_run
from cxr_tools.runtime.versions import library_versions

ROOT = Path(cxr_tools.__file__).resolve().parent
RESULT_LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "pandas", "h5py")
# learn2learn cannot be declared (pyproject.toml says why: its sdist does not build on Python >= 3.11).
UNDECLARABLE = {"learn2learn"}
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def _requirement_name(spec: str) -> str:
    for sep in "<>=!~[; ":
        spec = spec.split(sep)[0]
    return spec.strip().lower().replace("_", "-")


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for file in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"cxr_tools", "__future__"}


def test_every_imported_third_party_module_is_declared():
    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_requirement_name(d) for d in project["dependencies"]}
    declared |= {_requirement_name(d) for extra in project["optional-dependencies"].values() for d in extra}
    providers = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_level_modules()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & (declared | UNDECLARABLE):
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_versions_list_the_numerical_stack():
    versions = library_versions()
    for name in ("python", *RESULT_LIBRARIES):
        assert versions[name] == (metadata.version(name) if name != "python" else versions[name]) and versions[name]


def test_run_json_and_summary_json_record_the_versions(tmp_path):
    run = open_run(tmp_path / "run", "train", {"lr": 0.1})
    recorded = json.loads(run.run_json_path.read_text())["versions"]
    assert set(RESULT_LIBRARIES) <= set(recorded) and recorded == library_versions()

    cache = make_eval_cache(tmp_path, n=80)
    maml = make_run(tmp_path, cache, "maml")
    fast = ["--episodes", "1", "--shots", "2", "--queries", "2", "--device", "cpu", "--no-plots", "--steps", "1"]
    res = CliRunner().invoke(app, ["evaluate", str(maml), "--data", str(cache), *fast])
    assert res.exit_code == 0, res.output
    summary = json.loads((maml / "eval" / "summary.json").read_text())
    assert set(RESULT_LIBRARIES) <= set(summary["versions"]) and summary["versions"] == library_versions()
