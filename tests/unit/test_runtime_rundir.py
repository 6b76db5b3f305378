"""Run directory layout and the rules for reusing one (kind, completed, incomplete, config changes)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cxr_tools.errors import ConfigError, ModelError, OutputExistsError
from cxr_tools.runtime.rundir import RunDir, open_run, read_run_info, slurm_info


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    epochs: int = 2
    device: str = "cpu"


def test_new_run_has_layout_config_and_run_json(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    run = open_run(tmp_path / "r", "train", Cfg(), device="cpu", command=["cxr", "train"])
    assert run.checkpoints_dir.is_dir() and run.config_path.read_text().startswith("lr: 0.1")
    info = json.loads(run.run_json_path.read_text())
    assert info["kind"] == "train" and info["status"] == "running" and info["resumed"] == 0
    assert info["slurm"] == {"job_id": "77", "array_task_id": "3"}
    assert info["command"] == ["cxr", "train"] and info["device"] == "cpu" and info["world_size"] == 1
    assert "torch" in info["versions"] and info["tool_version"] and info["start_time"]
    run.set_status("completed")
    info = read_run_info(run.path)
    assert info["status"] == "completed" and info["end_time"] and info["sessions"][0]["status"] == "completed"


def test_other_kind_is_refused_even_with_overwrite(tmp_path):
    open_run(tmp_path / "r", "train-siamese", Cfg())
    for overwrite in (False, True):
        with pytest.raises(ModelError, match=r"cxr train-siamese.*not `cxr train`"):
            open_run(tmp_path / "r", "train", Cfg(), overwrite=overwrite)


def test_completed_run_needs_overwrite_which_starts_afresh(tmp_path):
    run = open_run(tmp_path / "r", "train", Cfg())
    run.log_metrics({"step": 1})
    run.set_status("completed")
    with pytest.raises(OutputExistsError, match=r"completed.*--overwrite"):
        open_run(tmp_path / "r", "train", Cfg())
    again = open_run(tmp_path / "r", "train", Cfg(lr=0.5), overwrite=True)
    assert again.status == "running" and again.read_metrics() == [] and again.read_config()["lr"] == 0.5


def test_incomplete_run_resumes_by_default_and_counts_sessions(tmp_path):
    run = open_run(tmp_path / "r", "train", Cfg())
    run.set_status("interrupted", signal="SIGTERM")
    (run.checkpoints_dir / ".last.pt.abc.tmp").write_bytes(b"torn")
    again = open_run(tmp_path / "r", "train", Cfg(device="cuda"))  # device may change between sessions
    info = again.read_info()
    assert info["status"] == "running" and info["resumed"] == 1 and len(info["sessions"]) == 2
    assert not list(run.checkpoints_dir.glob(".*.tmp"))
    assert again.read_config()["device"] == "cpu"  # the original config stays


def test_incomplete_run_with_resume_off_or_other_options_is_refused(tmp_path):
    open_run(tmp_path / "r", "train", Cfg()).set_status("failed")
    with pytest.raises(OutputExistsError, match="--resume"):
        open_run(tmp_path / "r", "train", Cfg(), resume=False)
    with pytest.raises(ConfigError, match=r"different options \(lr: 0.1 -> 0.2\)"):
        open_run(tmp_path / "r", "train", Cfg(lr=0.2))


def test_non_run_directory_is_not_clobbered(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not a cxr run directory"):
        open_run(tmp_path / "r", "train", Cfg())
    assert (tmp_path / "r" / "precious.txt").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        open_run(tmp_path / "f", "train", Cfg())


def test_non_main_rank_writes_nothing(tmp_path):
    run = open_run(tmp_path / "r", "train", Cfg(), is_main=False)
    run.log_metrics({"step": 1})
    run.write_config(Cfg())
    run.update_info(status="running")
    assert not (tmp_path / "r").exists()


def test_metrics_append_flush_and_truncate(tmp_path):
    run = RunDir(tmp_path)
    for step in range(1, 6):
        run.log_metrics({"kind": "step", "step": step, "loss": 1.0 / step})
    run.log_metrics({"kind": "note"})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"kind": "step", "st')  # torn line of a killed job
    assert [r.get("step") for r in run.read_metrics()] == [1, 2, 3, 4, 5, None]
    assert run.truncate_metrics(max_step=3) == 4  # steps 1-3 and the record without a step
    assert [r.get("step") for r in run.read_metrics()] == [1, 2, 3, None]
    assert run.metrics_path.read_text().endswith("\n")
    assert run.truncate_metrics(keep=2) == 2 and run.metrics_count() == 2


def test_slurm_info_outside_slurm_is_none():
    assert slurm_info({}) is None
    assert slurm_info({"SLURM_JOB_ID": "5", "SLURM_RESTART_COUNT": "1"}) == {"job_id": "5", "restart_count": "1"}


def test_a_run_started_with_the_old_log_every_name_resumes(tmp_path):
    """meta-train's ``log_every`` became ``log_every_steps``: logging cadence never blocks a resume."""
    open_run(tmp_path / "run", "meta-train", {"log_every": 10, "episodes": 4})
    again = open_run(tmp_path / "run", "meta-train", {"log_every_steps": 1, "episodes": 4})
    assert again.read_config()["log_every"] == 10  # the saved config stays as it was
    with pytest.raises(ConfigError):
        open_run(tmp_path / "run", "meta-train", {"log_every_steps": 1, "episodes": 8})
