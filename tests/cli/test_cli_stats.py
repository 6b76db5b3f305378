"""`cxr stats CACHE`: numbers match hand counts, PNGs are valid images, --json, errors, index-only reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cache_factory import CHEXPERT_SAMPLE, NIH_SAMPLE, chexpert_sample_index, make_cache, make_index, nih_sample_index
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.labels import CHEXPERT_LABELS, NIH_LABELS
from cxr_tools.engine.stats import StatsConfig, run_stats

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def hand_cache(tmp_path):
    # 6 images of 4 patients; labels A, B, C (raw: 1, 0, -1 uncertain, NaN not mentioned)
    values = np.array(
        [
            [1, 1, 0],  # p1 train
            [1, 0, -1],  # p1 train
            [0, 0, 0],  # p2 val   (no positive)
            [np.nan, 1, -1],  # p3 test
            [1, 1, 1],  # p3 test
            [0, np.nan, 0],  # p4 test (no positive)
        ],
        dtype=np.float32,
    )
    index = make_index(
        6,
        ("A", "B", "C"),
        values=values,
        patients=["p1", "p1", "p2", "p3", "p3", "p4"],
        splits=["train", "train", "val", "test", "test", "test"],
        views=["PA", "PA", "AP", "AP", "PA", ""],
    )
    return make_cache(tmp_path, labels=("A", "B", "C"), index=index, size=16)


def test_numbers_match_hand_counts(hand_cache, tmp_path):
    res = run_stats(StatsConfig(cache=hand_cache, out=tmp_path / "s"))
    assert (res.n_images, res.n_patients, res.no_positive_images) == (6, 4, 2)
    a, b, c = res.labels
    assert (a.images, a.patients, a.uncertain) == (3, 2, 0)
    assert (b.images, b.patients, b.uncertain) == (3, 2, 0)
    assert (c.images, c.patients, c.uncertain) == (1, 1, 2)
    assert a.split_images == {"train": 2, "val": 0, "test": 1} and a.split_patients["train"] == 1
    assert res.labels_per_image == {0: 2, 1: 2, 2: 1, 3: 1}
    assert {k: (v.images, v.patients) for k, v in res.splits.items()} == {
        "train": (2, 1),
        "val": (1, 1),
        "test": (3, 2),
    }
    assert res.views == {"PA": 3, "AP": 2, "unknown": 1}
    assert res.cooccurrence == ((3, 2, 1), (2, 3, 1), (1, 1, 1))
    saved = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert saved["labels"][2]["uncertain"] == 2 and saved["labels_per_image"]["1"] == 2


def test_cli_writes_valid_pngs_and_tables(hand_cache):
    res = runner.invoke(app, ["stats", str(hand_cache)])
    assert res.exit_code == 0, res.output
    for name in ("label_counts.png", "cooccurrence.png"):
        path = hand_cache / "stats" / name
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000
        import cv2

        img = cv2.imread(str(path))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 5
    assert "uncertain" in res.output and "(no positive label)" in res.output
    assert "train" in res.output and "label_counts.png" in res.output
    assert not list((hand_cache / "stats").glob(".*tmp"))


def test_cli_json_and_out_dir_and_no_plots(hand_cache, tmp_path):
    out = tmp_path / "elsewhere"
    res = runner.invoke(app, ["stats", str(hand_cache), "--out", str(out), "--json", "--no-plots"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_images"] == 6 and data["cooccurrence"][0] == [3, 2, 1]
    assert data["plots"] == [] and not (out / "label_counts.png").exists()
    assert (out / "stats.json").is_file() and not (hand_cache / "stats").exists()


def test_reads_the_index_only_never_the_images(hand_cache, tmp_path):
    (hand_cache / "images.h5").unlink()
    res = runner.invoke(app, ["stats", str(hand_cache), "--json", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_images"] == 6


def test_missing_or_incomplete_cache_is_one_clear_error(tmp_path):
    res = runner.invoke(app, ["stats", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "does not exist" in res.stderr and "cxr preprocess" in res.stderr
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "index.csv").write_text("row\n")
    res = runner.invoke(app, ["stats", str(tmp_path / "half")])
    assert res.exit_code == 1 and "incomplete" in res.stderr and "--resume" in res.stderr


@pytest.mark.skipif(not NIH_SAMPLE.is_file(), reason="tests/fixtures NIH CSV excerpt not copied yet")
def test_real_nih_excerpt_counts(tmp_path):
    index = nih_sample_index()
    path = make_cache(tmp_path, labels=NIH_LABELS, index=index, size=8)
    res = run_stats(StatsConfig(cache=path))
    card = next(s for s in res.labels if s.label == "Cardiomegaly")
    assert card.images == int((index["Cardiomegaly"] == 1).sum())
    assert card.patients == index.loc[index["Cardiomegaly"] == 1, "patient_id"].nunique()
    assert res.splits == {"unassigned": res.splits["unassigned"]} and res.splits["unassigned"].images == len(index)


@pytest.mark.skipif(not CHEXPERT_SAMPLE.is_file(), reason="tests/fixtures CheXpert CSV excerpt not copied yet")
def test_real_chexpert_excerpt_uncertain_counts(tmp_path):
    index = chexpert_sample_index()
    path = make_cache(tmp_path, labels=CHEXPERT_LABELS, index=index, size=8)
    res = run_stats(StatsConfig(cache=path, plots=False))
    for s in res.labels:
        assert s.uncertain == int((index[s.label] == -1).sum())
    assert res.views["Lateral"] == int((index["view"] == "Lateral").sum())
