"""``cxr models``: table, --json, one card in detail, unknown names, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.models import list_models

runner = CliRunner()


def test_json_lists_every_model_with_its_contract():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["detail"] is False
    cards = {m["name"]: m for m in doc["models"]}
    assert sorted(cards) == list_models()
    assert cards["conv4"]["norm"] == "group" and cards["conv4"]["in_chans"] == 1
    assert cards["densenet121"]["num_features"] == 1024
    assert {w["name"] for w in cards["densenet121"]["weights"]} == {
        "imagenet",
        "xrv",
        "xrv-nih",
        "xrv-pc",
        "xrv-chex",
        "xrv-mimic_ch",
        "xrv-mimic_nb",
        "xrv-rsna",
    }
    assert cards["resnet18"]["num_params"] > 10_000_000


def test_table_and_pattern():
    result = runner.invoke(app, ["models", "resnet*"])
    assert result.exit_code == 0
    assert "resnet18" in result.stdout and "resnet50" in result.stdout and "conv4" not in result.stdout


def test_one_card_in_detail():
    result = runner.invoke(app, ["models", "densenet121", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["detail"] is True and [m["name"] for m in doc["models"]] == ["densenet121"]
    text = runner.invoke(app, ["models", "densenet121"]).stdout
    assert "TorchXRayVision" in text and "1024" in text


def test_unknown_model_exits_1_with_suggestion():
    result = runner.invoke(app, ["models", "resnet19"])
    assert result.exit_code == 1
    assert "Did you mean resnet18" in result.stderr
    assert result.stdout == ""


def test_cli_module_does_not_import_torch():
    code = "import sys, cxr_tools.cli.models; print('torch' in sys.modules or 'torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
