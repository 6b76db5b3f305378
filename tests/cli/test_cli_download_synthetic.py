"""``cxr download synthetic``: writes the dataset, reports it, and fails cleanly on bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr_tools.cli.app import app

runner = CliRunner()


def test_writes_nih_layout_and_reports_json(tmp_path):
    dest = tmp_path / "syn"
    result = runner.invoke(
        app, ["download", "synthetic", "--dest", str(dest), "--patients", "3", "--size", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    df = pd.read_csv(dest / "Data_Entry_2017_v2020.csv")
    assert report["n_images"] == len(df) == len(list((dest / "images").iterdir()))
    assert report["n_patients"] == 3 and report["layout"] == "nih" and report["format"] == "png"
    assert sum(report["label_counts"].values()) >= report["n_images"]
    assert report["metadata_csv"] == str(dest / "Data_Entry_2017_v2020.csv")


def test_table_output_and_chexpert_layout(tmp_path):
    dest = tmp_path / "chx"
    args = ["download", "synthetic", "-o", str(dest), "--patients", "4", "--size", "32", "--layout", "chexpert"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "No Finding" in result.stdout and "written to" in result.stdout
    assert (dest / "CheXpert-v1.0-small" / "train.csv").is_file()


def test_config_file_values_apply_and_flags_win(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("synthetic:\n  patients: 2\n  size: 40\n  seed: 9\n")
    dest = tmp_path / "ds"
    result = runner.invoke(
        app, ["download", "synthetic", "--dest", str(dest), "--config", str(cfg), "--size", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_patients"] == 2
    import cv2

    img = cv2.imread(str(next((dest / "images").iterdir())), 0)
    assert img.shape == (32, 32)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--layout", "mimic"], 1, "Unknown layout 'mimic'"),
        (["--format", "tiff"], 1, "Unknown format 'tiff'"),
        (["--layout", "chexpert", "--format", "dicom"], 1, "NIH layout only"),
        (["--patients", "0"], 2, "--patients"),
        (["--size", "0"], 2, "--size"),
        (["--seed", "-3"], 1, "--seed must be"),
    ],
)
def test_bad_input_exits_with_one_clear_line_and_writes_nothing(tmp_path, args, code, words):
    dest = tmp_path / "out"
    result = runner.invoke(
        app, ["download", "synthetic", "--dest", str(dest), "--patients", "2", "--size", "32", *args]
    )
    assert result.exit_code == code
    assert words in result.stderr
    if code == 1:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
        assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    dest = tmp_path / "out"
    base = ["download", "synthetic", "--dest", str(dest), "--patients", "1", "--size", "32"]
    assert runner.invoke(app, base).exit_code == 0
    result = runner.invoke(app, [*base, "--seed", "4"])
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    result = runner.invoke(app, [*base, "--seed", "4", "--overwrite", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["n_patients"] == 1
