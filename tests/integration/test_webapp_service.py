"""What the ``cxr app`` page computes, without a browser: the same numbers as predict / similarity, bad uploads
as messages, few-shot adaptation saved as a directory predict reproduces, results views, safe serving defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.predict_io.predictions import csv_text, thresholds_path
from cxr_tools.engine.similarity import SimilarityConfig, run_similarity
from cxr_tools.errors import ConfigError, InputError, ModelError, OutputExistsError
from cxr_tools.webapp.results import find_results, load_results
from cxr_tools.webapp.server import AppConfig
from cxr_tools.webapp.service import RunService, run_thresholds

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def world(webapp_world):
    return webapp_world


@pytest.fixture(scope="module")
def service(world):
    return RunService(world.run, "cpu")


def test_classify_gives_predicts_csv_and_messages_for_bad_uploads(world, service, tmp_path):
    uploads = [world.images[0], world.text_png, world.no_pixels, world.colour, world.images[1]]
    result = service.classify(uploads)
    assert result.errors[0] == "" and result.errors[4] == ""
    assert "text file" in result.errors[1]
    assert "DICOM without pixel data" in result.errors[2]
    assert "colour picture" in result.errors[3]
    # the same rows `cxr predict` writes for these files (names aside: predict writes the path it was given)
    out = tmp_path / "p.csv"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in uploads[:3] + uploads[4:]) + "\n")
    res = runner.invoke(app, ["predict", str(listing), "-o", str(out), "-m", str(world.run), "--threshold", "0.5"])
    assert res.exit_code == 3, res.output
    expected = [line.split(",")[1:] for line in out.read_text().splitlines()]
    shown = [line.split(",")[1:] for line in result.csv.splitlines()]
    assert shown[0] == expected[0]  # header: labels, _pred columns, error
    for got, want in zip([shown[1], shown[5]], [expected[1], expected[4]], strict=True):
        np.testing.assert_allclose([float(x) for x in got[:2]], [float(x) for x in want[:2]], atol=2e-6)
    assert result.csv == csv_text([["path", *expected[0]], *result.rows])  # the download is predict's format


def test_cam_overlay_and_unknown_finding(world, service):
    img = service.decode(world.images[0])
    rgb = service.cam(img, "B")
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 256
    with pytest.raises(ConfigError, match="Nodule"):
        service.cam(img, "Nodule")


def test_similarity_is_cxr_similarity(world, service):
    got = service.similarity(world.images[0], world.images[1])
    want = run_similarity(SimilarityConfig(world.images[0], world.images[1], world.run, device="cpu"))
    assert got["similarity"] == pytest.approx(want.similarity, abs=1e-6)
    assert got["distance"] == pytest.approx(want.distance, abs=1e-6)
    assert service.similarity(world.images[0], world.images[0])["similarity"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="text file"):
        service.similarity(world.images[0], world.text_png)


def test_few_shot_adapts_and_saves_a_directory_predict_reproduces(world, service, tmp_path):
    with pytest.raises(InputError, match="positive and negative"):
        service.adapt("Blob", world.positives, [])
    with pytest.raises(ConfigError):
        service.adapt("negative", world.positives, world.negatives)
    adapted = service.adapt("Blob", world.positives, world.negatives)
    assert adapted.method == "finetune" and adapted.ways == 1
    scored = service.score_adapted(adapted, [*world.positives, world.text_png])
    assert scored.errors[-1] and all(p is not None and 0 <= p[0] <= 1 for p in scored.probs[:-1])
    saved = service.save_adapted(adapted, tmp_path / "blob-run")
    with pytest.raises(OutputExistsError):
        service.save_adapted(adapted, tmp_path / "blob-run")
    mine = tmp_path / "my-figures"  # a folder of the user's own images is never written into
    mine.mkdir()
    (mine / "figure.png").write_bytes(Path(world.positives[0]).read_bytes())
    (mine / ".notes").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a cxr few-shot run"):
        service.save_adapted(adapted, mine)
    assert sorted(p.name for p in mine.iterdir() if p.name != ".cxr.lock") == [".notes", "figure.png"]
    config = yaml.safe_load((saved / "config.yaml").read_text())["predict"]
    assert config["method"] == "finetune" and sorted(p.name for p in (saved / "support").iterdir()) == [
        "Blob",
        "negative",
    ]
    out = tmp_path / "again.csv"
    res = runner.invoke(
        app, ["predict", str(world.positives[0]), "-o", str(out), "--config", str(saved / "config.yaml")]
    )
    assert res.exit_code == 0, res.output
    row = out.read_text().splitlines()[1].split(",")
    assert float(row[1]) == pytest.approx(float(scored.probs[0][0]), abs=1e-5)  # the session's adaptation, redone
    # the page's support-chosen threshold is the one predict chooses from the saved support set
    assert 0.0 <= adapted.threshold <= 1.0
    chosen = json.loads(thresholds_path(out).read_text())
    assert chosen["thresholds"]["Blob"] == pytest.approx(adapted.threshold, abs=1e-5)


def test_a_maml_run_has_no_classify_but_adapts(tmp_path, world):
    from evaluate_factory import make_run

    maml = RunService(make_run(tmp_path, world.cache, "maml"), "cpu")
    assert maml.labels == [] and not maml.can_classify
    with pytest.raises(ModelError, match="Few-shot tab"):
        maml.classify(world.images)
    adapted = maml.adapt("Blob", world.positives, world.negatives)
    assert adapted.method == "maml" and adapted.ways == 2  # the 2-way head it was meta-trained with


def test_the_run_is_loaded_once_whatever_the_page_asks(world, monkeypatch):
    import cxr_tools.models as models

    loads = []
    real = models.load_model_dir
    monkeypatch.setattr(models, "load_model_dir", lambda *a, **k: loads.append(a) or real(*a, **k))
    service = RunService(world.run, "cpu")
    service.classify(world.images)
    service.cam(service.decode(world.images[0]), "A")
    service.similarity(*world.images)
    service.score_adapted(service.adapt("Blob", world.positives, world.negatives), world.images)
    assert len(loads) == 1


def test_run_thresholds_come_from_the_model_card():
    meta = {"extra": {"thresholds": {"A": 0.3, "B": None}, "threshold_rule": "max F1 on val"}}
    chosen, rule = run_thresholds(meta, ["A", "B"])
    assert chosen == {"A": 0.3, "B": 0.5} and "max F1 on val" in rule
    assert run_thresholds({}, ["A"]) == ({"A": 0.5}, "0.5 (the run records no thresholds)")


def test_results_views(world):
    found = find_results([world.root])
    assert world.evaluation.resolve() in found
    view = load_results(world.evaluation)
    assert view.kind == "evaluation" and "| auc |" in view.markdown and "D" in view.markdown
    assert any(p.endswith("roc.png") for p, _ in view.plots)
    assert load_results(world.run).kind == "evaluation"  # a run folder opens its eval/
    with pytest.raises(InputError, match="not an evaluation"):
        load_results(world.cache)


def test_serving_defaults_are_safe(world):
    assert AppConfig(world.run).host == "127.0.0.1"
    with pytest.raises(ConfigError, match="--auth"):
        AppConfig(world.run, host="0.0.0.0")
    assert AppConfig(world.run, host="0.0.0.0", auth="u:p").auth == "u:p"
    with pytest.raises(ConfigError, match="USER:PASS"):
        AppConfig(world.run, auth="nopassword")
