"""Workspace end to end: in a fresh CXR_HOME the usage lines work with no path on the command line.

``cxr download synthetic``, ``cxr preprocess``, ``cxr train-siamese``, ``cxr meta-train --shots 7`` (interrupted,
then rerun: it resumes the same run directory), ``cxr evaluate``, ``cxr predict dir/ -o out.csv`` and ``cxr runs``;
the budgets are kept tiny by the user config ``$CXR_HOME/config.yaml``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import cxr_tools.cli.meta_train as meta_train_cli
from cxr_tools.cli.app import app
from cxr_tools.runtime.progress import RecordingProgress

runner = CliRunner()

# 400 phantom patients at 32 px: enough patients per meta-train class for 7 shots + 2 queries; the meta-val
# classes are too rare for 9 patients, so no validation (the last weights are the model).
USER_CONFIG = """
device: cpu
threads: 1
synthetic: {patients: 400, size: 32}
preprocess: {size: 32, workers: 0}
train-siamese: {backbone: conv4-tiny, embedding_dim: 8, epochs: 1, batch_size: 8, pairs_per_epoch: 16, val_pairs: 8}
meta-train: {backbone: conv4-tiny, queries: 2, episodes: 4, meta_batch: 2, adapt_steps: 1, val_episodes: 0,
             first_order: true, checkpoint_every_steps: 1}
evaluate: {episodes: 2, queries: 2, bootstrap: 0, plots: false}
"""


class _StopAfterFirstStep(RecordingProgress):
    """Ctrl-C after the first training step, as a user (or the signal handler) would."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Any]:
        with super().task(description, total) as inner:

            class _T:
                def advance(self, n: float = 1) -> None:
                    inner.advance(n)
                    if description.startswith("epoch"):
                        raise KeyboardInterrupt

                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

            yield _T()


def _ok(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"cxr {' '.join(args)}: {result.output}"
    return result


def _class_folders(dataset: Path, target: Path, classes: tuple[str, ...], per_class: int) -> Path:
    """A --support folder: ``per_class`` images of each single-finding class, ``negative`` for No Finding."""
    with (dataset / "Data_Entry_2017_v2020.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for cls in classes:
        folder = target / ("negative" if cls == "No Finding" else cls)
        folder.mkdir(parents=True)
        for row in [r for r in rows if r["Finding Labels"] == cls][:per_class]:
            shutil.copy(dataset / "images" / row["Image Index"], folder)
    return target


def test_the_usage_lines_work_in_a_fresh_workspace(tmp_path, monkeypatch):
    home = Path(os.environ["CXR_HOME"])
    (home / "config.yaml").write_text(USER_CONFIG)
    monkeypatch.chdir(tmp_path)

    _ok("download", "synthetic")
    dataset = home / "data" / "synthetic"
    _ok("preprocess")
    assert (home / "cache" / "synthetic-32px" / "manifest.json").is_file()
    _ok("train-siamese")

    with monkeypatch.context() as patch:
        patch.setattr(meta_train_cli, "progress_for", lambda quiet=False: _StopAfterFirstStep())
        stopped = runner.invoke(app, ["meta-train", "--shots", "7"])
    assert stopped.exit_code == 130, stopped.output
    (run,) = (home / "runs" / "meta-train").iterdir()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    resumed = _ok("meta-train", "--shots", "7")
    assert f"Run directory: {run}" in resumed.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and len(info["sessions"]) == 2
    assert [p.name for p in (home / "runs" / "meta-train").iterdir()] == [run.name]

    evaluated = _ok("evaluate")
    assert str(run) in evaluated.stderr and (run / "eval" / "summary.json").is_file()

    # a MAML run adapts to labelled examples first: the user's support set lives in the user config too
    support = _class_folders(dataset, tmp_path / "support", ("Effusion", "Infiltration", "No Finding"), 2)
    with (home / "config.yaml").open("a") as f:
        f.write(f"predict: {{support: {support}}}\n")
    images = tmp_path / "dir"
    images.mkdir()
    for image in sorted((dataset / "images").iterdir())[:3]:
        shutil.copy(image, images)
    predicted = _ok("predict", "dir/", "-o", "out.csv")
    assert f"Model: {run}" in predicted.stderr
    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["error"] == "" for r in rows)
    record = json.loads((tmp_path / "out.csv.model.json").read_text())
    assert record["model"] == str(run.resolve()) and "most recently completed" in record["chosen_by"]

    listed = json.loads(_ok("runs", "--json").stdout)["entries"]
    kinds = {(e["kind"], e["status"]) for e in listed}
    assert {("dataset", "completed"), ("cache", "completed"), ("train-siamese", "completed")} <= kinds
    assert {("meta-train", "completed"), ("evaluate", "completed")} <= kinds
    evaluation = next(e for e in listed if e["kind"] == "evaluate")
    assert evaluation["metric"].startswith("AUC ") and evaluation["path"] == str(run / "eval")
    table = _ok("ls").stdout
    assert "synthetic-32px" in table and run.name in table
