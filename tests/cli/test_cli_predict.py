"""`cxr predict` from the command line: exit codes 0 / 1 / 3, stdout only the summary, CSV contents, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from predict_fixtures import make_mixed_folder, make_model_dir, phantom, read_rows, write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path):
    return make_model_dir(tmp_path / "run" / "model")


def test_mixed_folder_exits_3_and_reports_each_failure(tmp_path, model_dir):
    folder = make_mixed_folder(tmp_path / "imgs")
    out = tmp_path / "pred.csv"
    res = runner.invoke(app, ["predict", str(tmp_path / "imgs"), "-o", str(out), "--model", str(model_dir), "-b", "2"])
    assert res.exit_code == 3, res.output
    assert "5 of 7 images scored for 2 classes" in res.stdout and str(out) in res.stdout
    assert "e_broken.png: truncated PNG" in res.stderr and "f_notes.png: a text file" in res.stderr
    assert "Partial success: 2 inputs failed" in res.stderr
    assert "README.txt" in res.stderr  # the skipped file is named in the log
    rows = read_rows(out)
    assert [r["path"] for r in rows] == folder["order"]


def test_json_summary_is_all_of_stdout(tmp_path):
    model = make_model_dir(tmp_path / "m", labels=("Effusion",))
    for i in range(3):
        write_png(tmp_path / "imgs" / f"{i}.png", phantom(np.random.default_rng(i)))
    out = tmp_path / "p.csv"
    res = runner.invoke(
        app,
        ["predict", str(tmp_path / "imgs"), "-o", str(out), "-m", str(model), "--json", "--threshold", "Effusion=0.4"],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_inputs"] == 3 and summary["n_failed"] == 0 and summary["output"] == str(out)
    assert summary["labels"] == ["Effusion"] and summary["thresholds"] == {"Effusion": 0.4}
    rows = read_rows(out)
    assert [r["Effusion_pred"] for r in rows] == [str(int(float(r["Effusion"]) >= 0.4)) for r in rows]


def test_empty_folder_and_all_failed_exit_1(tmp_path, model_dir):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["predict", str(tmp_path / "empty"), "-o", str(tmp_path / "p.csv"), "-m", str(model_dir)])
    assert res.exit_code == 1 and "No images found" in res.stderr and res.stdout == ""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("nope")
    (tmp_path / "bad" / "b.dcm").write_bytes(b"\0" * 10)
    res = runner.invoke(app, ["predict", str(tmp_path / "bad"), "-o", str(tmp_path / "p.csv"), "-m", str(model_dir)])
    assert res.exit_code == 1 and "all 2 inputs failed" in res.stderr
    assert [r["error"] != "" for r in read_rows(tmp_path / "p.csv")] == [True, True]


def test_existing_output_needs_overwrite(tmp_path, model_dir):
    write_png(tmp_path / "imgs" / "a.png", phantom(np.random.default_rng(0)))
    out = tmp_path / "p.csv"
    out.write_text("path,A,error\nold.png,0.5,\n")  # an earlier prediction (--overwrite replaces nothing else)
    run_dir = model_dir.parent  # a run directory works as well as its model/ folder
    args = ["predict", str(tmp_path / "imgs"), "-o", str(out), "-m", str(run_dir)]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--overwrite" in res.stderr and "old.png" in out.read_text()
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0 and read_rows(out)[0]["error"] == ""


def test_maml_run_without_support_is_a_clear_error(tmp_path):
    model = make_model_dir(tmp_path / "maml", training="maml", num_classes=2)
    write_png(tmp_path / "imgs" / "a.png", phantom(np.random.default_rng(0)))
    res = runner.invoke(app, ["predict", str(tmp_path / "imgs"), "-o", str(tmp_path / "p.csv"), "-m", str(model)])
    assert res.exit_code == 1
    assert "maml run" in res.stderr and "--support" in res.stderr


def test_bad_threshold_and_config_file(tmp_path, model_dir):
    write_png(tmp_path / "imgs" / "a.png", phantom(np.random.default_rng(0)))
    args = ["predict", str(tmp_path / "imgs"), "-o", str(tmp_path / "p.csv"), "-m", str(model_dir)]
    res = runner.invoke(app, [*args, "--threshold", "Nodule=0.2"])
    assert res.exit_code == 1 and "not predicted" in res.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("predict:\n  threshold: '0.0'\n  batch_size: 4\n")
    res = runner.invoke(app, [*args, "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert read_rows(tmp_path / "p.csv")[0]["Mass_pred"] == "1"


def test_support_folder_from_the_cli(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    for cls in ("Pneumonia", "NORMAL"):
        for i in range(2):
            write_png(tmp_path / "s" / cls / f"{i}.png", phantom(rng))
    out = tmp_path / "p.csv"
    args = ["predict", str(tmp_path / "s"), "-o", str(out), "-m", str(model_dir), "--support", str(tmp_path / "s")]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"] == "finetune" and summary["n_support"] == 4 and summary["labels"] == ["Pneumonia"]
    assert list(read_rows(out)[0]) == ["path", "Pneumonia", "Pneumonia_pred", "error"]
    # the thresholds were chosen on the support set: stated on stderr and beside the CSV
    assert "maximising F1 on the support set" in res.stderr and "p.thresholds.json" in res.stderr
    record = json.loads((tmp_path / "p.thresholds.json").read_text())
    assert record["source"] == "support" and set(record["thresholds"]) == {"Pneumonia"}
    assert summary["thresholds"] == record["thresholds"]
    res = runner.invoke(app, [*args, "--overwrite", "--threshold", "none"])
    assert res.exit_code == 0 and list(read_rows(out)[0]) == ["path", "Pneumonia", "error"]
    res = runner.invoke(app, [*args, "--overwrite", "--min-support", "3"])
    assert res.exit_code == 1 and "fewer than 3 positive" in res.stderr


def test_cam_writes_an_overlay_per_image_and_finding(tmp_path, model_dir):
    for i in range(3):
        write_png(tmp_path / "imgs" / f"p{i}.png", phantom(np.random.default_rng(i)))
    (tmp_path / "imgs" / "broken.png").write_text("not an image")
    out, cam = tmp_path / "p.csv", tmp_path / "cam"
    args = ["predict", str(tmp_path / "imgs"), "-o", str(out), "-m", str(model_dir), "-b", "2", "--cam", str(cam)]
    res = runner.invoke(app, [*args, "--cam-classes", "Mass"])
    assert res.exit_code == 3, res.output  # the broken file fails as before; the others get overlays
    names = sorted(p.name for p in cam.iterdir() if not p.name.startswith("."))  # the folder's marker aside
    assert names == ["00001_p0_Mass.png", "00002_p1_Mass.png", "00003_p2_Mass.png"], names
    import cv2

    img = cv2.imread(str(cam / names[0]))
    assert img.shape == (256, 256, 3)
    assert "3 saliency overlays" in res.stdout
    res = runner.invoke(app, [*args, "--overwrite", "--threshold", "0"])  # every finding is above threshold 0
    assert res.exit_code == 3, res.output
    assert len([p for p in cam.iterdir() if not p.name.startswith(".")]) == 6
    res = runner.invoke(app, [*args, "--overwrite", "--cam-classes", "Nodule"])
    assert res.exit_code == 1 and "Nodule" in res.stderr
    res = runner.invoke(app, [*args[:3], str(tmp_path / "new.csv"), *args[4:]])
    assert res.exit_code == 1 and "saliency folder" in res.stderr.lower()  # earlier overlays need --overwrite
