"""`cxr similarity A B`: symmetric, maximal for an image with itself, Siamese distances, --json, --plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from predict_fixtures import make_model_dir, phantom, write_dicom, write_png
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.engine.similarity import SimilarityConfig, run_similarity

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = write_png(tmp_path / "a.png", phantom(rng))
    b = write_dicom(tmp_path / "b.dcm", phantom(rng))
    return a, b


@pytest.mark.parametrize(
    ("training", "distance", "embedding"),
    [
        ("supervised", "cosine", "backbone features"),
        ("maml", "cosine", "backbone features"),
        ("siamese", "cosine", "siamese projection"),
        ("siamese", "euclidean", "siamese projection"),
    ],
)
def test_symmetric_and_self_similarity_is_maximal(tmp_path, images, training, distance, embedding):
    extra = {"distance": distance} if training == "siamese" else {}
    n = 8 if training == "siamese" else 2
    model = make_model_dir(tmp_path / training, training=training, num_classes=n, extra=extra)
    a, b = images
    ab = run_similarity(SimilarityConfig(a=a, b=b, model=model))
    ba = run_similarity(SimilarityConfig(a=b, b=a, model=model))
    aa = run_similarity(SimilarityConfig(a=a, b=a, model=model))
    assert ab.distance_kind == distance and ab.embedding == embedding
    assert ab.similarity == pytest.approx(ba.similarity, abs=1e-6)
    assert 0.0 <= ab.similarity < aa.similarity <= 1.0 + 1e-6
    assert aa.similarity == pytest.approx(1.0, abs=1e-5) and aa.distance == pytest.approx(0.0, abs=2e-3)
    assert ab.similarity == pytest.approx(1.0 - ab.distance / 2.0, abs=1e-6)


def test_cli_json_plot_and_text(tmp_path, images):
    model = make_model_dir(tmp_path / "m")
    a, b = images
    plot = tmp_path / "plots" / "pair.png"
    res = runner.invoke(app, ["similarity", str(a), str(b), "--model", str(model), "--json", "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) >= {"similarity", "distance", "distance_kind", "plot"} and data["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 2000
    res = runner.invoke(app, ["similarity", str(a), str(a), "-m", str(model)])
    assert res.exit_code == 0 and res.stdout.startswith("similarity 1.0000")


def test_unreadable_image_is_exit_1(tmp_path, images):
    model = make_model_dir(tmp_path / "m")
    (tmp_path / "bad.png").write_text("text")
    res = runner.invoke(app, ["similarity", str(images[0]), str(tmp_path / "bad.png"), "-m", str(model)])
    assert res.exit_code == 1 and "bad.png" in res.stderr and "text file" in res.stderr
    res = runner.invoke(app, ["similarity", str(images[0]), str(images[1]), "-m", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "model folder" in res.stderr
