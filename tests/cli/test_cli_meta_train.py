"""`cxr meta-train`: flags and --config reach the engine; bad input is one clear line and exit 1; --json output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cache_factory import make_cache, make_index
from typer.testing import CliRunner

import cxr_tools.engine.meta_train as engine_mod
from cxr_tools.cli.app import app
from cxr_tools.data.labels import NIH_LABELS
from cxr_tools.engine.meta_train import MetaTrainConfig, MetaTrainResult

runner = CliRunner()
LABELS = ("A", "B", "C", "D", "E")
SPLIT = "train=A,B;val=C,D;test=E"


def _cache(tmp_path: Path, labels=LABELS, per_class: int = 20, name: str = "cache") -> Path:
    """One positive class per image (cycling), plus as many negatives as positives of one class x 2."""
    n = per_class * (len(labels) + 4)
    values = np.zeros((n, len(labels)), dtype=np.float32)
    for i in range(n):
        if i % (len(labels) + 4) < len(labels):
            values[i, i % (len(labels) + 4)] = 1
    index = make_index(n, labels, values=values, patients=[f"p{i}" for i in range(n)])
    return make_cache(tmp_path, labels=labels, index=index, name=name)


def _fake_result(cfg: MetaTrainConfig) -> MetaTrainResult:
    return MetaTrainResult(
        run_dir=cfg.output, status="completed", model_dir=cfg.output / "model", engine="func", meta_steps=3,
        total_meta_steps=3, episodes_seen=12, meta_split={"name": "c", "train": ["A"], "val": ["B"], "test": ["C"]},
        pool_sizes={"train": 1, "val": 2, "test": 3}, best_val_auc=0.75, best_step=2, selected="best", resumed=False,
        seconds=1.0, tasks_per_second=12.0,
    )  # fmt: skip


@pytest.fixture
def captured(monkeypatch):
    seen: dict[str, MetaTrainConfig] = {}

    def fake(cfg, progress=None):
        seen["cfg"] = cfg
        return _fake_result(cfg)

    monkeypatch.setattr(engine_mod, "meta_train", fake)
    return seen


def test_flags_reach_the_engine(captured, tmp_path):
    args = ["meta-train", str(tmp_path / "c"), "-o", str(tmp_path / "r"), "--shots", "7", "--first-order"]
    args += ["--engine", "higher", "--init", "runs/sup", "--meta-split", SPLIT, "--episodes", "40", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = captured["cfg"]
    assert (cfg.shots, cfg.first_order, cfg.engine, cfg.init, cfg.meta_split, cfg.episodes) == (
        7,
        True,
        "higher",
        "runs/sup",
        SPLIT,
        40,
    )
    assert (cfg.ways, cfg.queries, cfg.inner_lr, cfg.meta_lr, cfg.adapt_steps, cfg.meta_batch) == (
        2,
        10,
        0.01,
        0.0001,
        5,
        4,
    )
    out = json.loads(result.stdout)
    assert out["status"] == "completed" and out["best_val_auc"] == 0.75


def test_config_file_fills_options_and_flags_win(captured, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("meta-train:\n  shots: 3\n  ways: 1\n  inner-lr: 0.5\n")
    args = ["meta-train", str(tmp_path / "c"), "-o", str(tmp_path / "r"), "--config", str(conf), "--shots", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = captured["cfg"]
    assert (cfg.shots, cfg.ways, cfg.inner_lr) == (7, 1, 0.5)
    assert "best meta-val AUC" in result.stdout and "0.7500" in result.stdout


def _run(cache: Path, out: Path, *extra: str):
    base = ["meta-train", str(cache), "-o", str(out), "--backbone", "conv4-tiny", "--engine", "func", "--threads", "1"]
    return runner.invoke(app, [*base, *extra])


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_too_few_images_names_the_class_and_counts(tmp_path):
    cache = _cache(tmp_path, per_class=10)
    line = _one_error_line(_run(cache, tmp_path / "r", "--meta-split", SPLIT, "--shots", "7", "--queries", "5"))
    assert "Meta-train" in line and "A: 10 patients" in line and "B: 10 patients" in line and "12 patients" in line
    assert "Lower --shots/--queries" in line and "--images-per-patient" in line and not (tmp_path / "r").exists()


def test_classes_not_in_the_label_space(tmp_path):
    cache = _cache(tmp_path)
    line = _one_error_line(_run(cache, tmp_path / "r", "--meta-split", "train=A,Zebra;val=C,D;test=E"))
    assert "Zebra" in line and "not in the label space" in line


def test_other_label_space_needs_an_explicit_split(tmp_path):
    line = _one_error_line(_run(_cache(tmp_path), tmp_path / "r"))
    assert "not NIH's" in line and "--meta-split" in line


def test_nih_labels_default_to_metachest(tmp_path):
    cache = _cache(tmp_path, labels=NIH_LABELS, per_class=3)  # far too small: the error shows which split ran
    line = _one_error_line(_run(cache, tmp_path / "r"))
    assert "Meta-train" in line and "Effusion: 3" in line


def test_missing_learn2learn_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # import learn2learn -> ImportError
    cache = _cache(tmp_path)
    result = runner.invoke(
        app, ["meta-train", str(cache), "-o", str(tmp_path / "r"), "--meta-split", SPLIT, "--engine", "learn2learn"]
    )
    line = _one_error_line(result)
    assert "pip install --no-deps learn2learn==0.2.0" in line and "--engine func" in line


def test_init_mismatch_is_one_line(tmp_path):
    from cxr_tools.models import create_model, save_model_dir

    save_model_dir(create_model("resnet-tiny", num_classes=2), {"training": "supervised"}, tmp_path / "sup")
    line = _one_error_line(
        _run(_cache(tmp_path), tmp_path / "r", "--meta-split", SPLIT, "--init", str(tmp_path / "sup"))
    )
    assert "resnet-tiny" in line and "--backbone" in line


def test_shots_7_end_to_end_json(tmp_path):
    cache = _cache(tmp_path)
    extra = ["--meta-split", SPLIT, "--shots", "7", "--queries", "3", "--adapt-steps", "1", "--meta-batch", "1"]
    result = _run(cache, tmp_path / "r", *extra, "--episodes", "1", "--val-episodes", "1", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["status"] == "completed" and out["meta_steps"] == 1 and out["selected"] == "best"
    assert out["meta_split"]["test"] == ["E"] and Path(out["model_dir"], "model.json").is_file()
    again = _run(cache, tmp_path / "r", *extra, "--episodes", "1", "--val-episodes", "1")
    line = _one_error_line(again)
    assert "completed" in line and "--overwrite" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--checkpoint-every-steps", "5", "--checkpoint-every-minutes", "2.5", "--log-every-steps", "3"], (5, 2.5, 3)),
        (["--log-every", "4"], (None, 10.0, 4)),  # the old spelling stays a second name of the same option
    ],
)
def test_checkpoint_and_log_flags_share_the_trainers_vocabulary(captured, tmp_path, flags, expected):
    args = ["meta-train", str(tmp_path / "c"), "-o", str(tmp_path / "r"), "--meta-split", SPLIT, *flags, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = captured["cfg"]
    assert (cfg.checkpoint_every_steps, cfg.checkpoint_every_minutes, cfg.log_every_steps) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "maml"),
        (["--first-order"], "fomaml"),
        (["--algorithm", "fomaml"], "fomaml"),
        (["--algorithm", "protonet"], "protonet"),
    ],
)
def test_algorithm_and_its_first_order_alias(captured, tmp_path, flags, expected):
    from cxr_tools.engine.meta_train import resolve_algorithm

    result = runner.invoke(app, ["meta-train", str(tmp_path / "c"), "-o", str(tmp_path / "r"), *flags, "--json"])
    assert result.exit_code == 0, result.output
    assert resolve_algorithm(captured["cfg"]) == expected


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--algorithm", "reptile"], ["Unknown --algorithm 'reptile'", "maml, fomaml, protonet"]),
        (["--algorithm", "protonet", "--first-order"], ["--first-order is a MAML option", "Drop --first-order"]),
    ],
)
def test_a_bad_algorithm_is_one_line(tmp_path, flags, needles):
    line = _one_error_line(_run(_cache(tmp_path), tmp_path / "r", "--meta-split", SPLIT, *flags))
    assert all(n in line for n in needles) and not (tmp_path / "r").exists()
