"""The sbatch files of examples/slurm/ on the real one-node SLURM that CI starts (.ci/setup-slurm.sh; skipped with
the reason without one): the whole chain of pipeline.sh ends COMPLETED with a comparison, and train.sbatch, sent
SIGUSR1 as a time limit would, requeues itself, resumes, and ends with the weights of an uninterrupted run.

Settings are the smallest that exercise every step (32 px, a few steps and episodes, 1 CPU per job). The cluster
has no accounting database, so job states come from ``scontrol show job`` (kept MinJobAge = 300 s after the end).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from script_modules import REPO
from slurm_cluster import require_slurm, start_requeued_now

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
EXAMPLES = REPO / "examples" / "slurm"
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
TRAIN_ARGS = "--model conv4-tiny --epochs 100 --max-steps 150 --batch-size 8 --log-every-steps 1"
SBATCH_ARGS = "--cpus-per-task=1 --mem=1"  # what this one 2-CPU node can give every job at once


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A synthetic NIH-layout dataset with enough patients per class for 7-shot episodes."""
    require_slurm()
    dest = tmp_path_factory.mktemp("slurm-data") / "nih"
    generate(SyntheticConfig(dest=dest, patients=400, size=40, seed=0))
    return dest


def _env(**values: str) -> dict[str, str]:
    """The jobs' environment (sbatch exports the submitter's): this checkout's cxr, on the CPU."""
    return {
        **os.environ,
        "CXR": f"{sys.executable} -m cxr_tools",
        "PYTHONPATH": str(REPO),
        "DEVICE": "cpu",
        "WORKERS": "0",
        **values,
    }


def _jobs(job_id: str) -> list[dict[str, str]]:
    """Every record ``scontrol show job`` gives for ``job_id`` (one per array task)."""
    done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    records = []
    for line in done.stdout.splitlines():
        records.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return records


def _wait(job_ids: list[str], logs: Path, timeout: float = 900) -> dict[str, list[dict[str, str]]]:
    """Wait until every job ended; fail at once when one can never start (a dependency failed)."""
    deadline = time.monotonic() + timeout
    while True:
        states = {job: _jobs(job) for job in job_ids}
        if all(records and all(r.get("JobState") in ENDED for r in records) for records in states.values()):
            return states
        stuck = [r for records in states.values() for r in records if r.get("Reason") == "DependencyNeverSatisfied"]
        if stuck or time.monotonic() > deadline:
            subprocess.run(["scancel", *job_ids], capture_output=True)
            raise AssertionError(f"jobs did not end: {_summary(states)}\n{_tails(logs)}")
        time.sleep(1)


def _summary(states: dict[str, list[dict[str, str]]]) -> str:
    return "; ".join(f"{r.get('JobId')} {r.get('JobName')} {r.get('JobState')}" for rs in states.values() for r in rs)


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in sorted(logs.glob("*.out")))


def test_pipeline_sh_runs_the_whole_chain_to_completed(dataset, tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    meta = "--queries 2 --images-per-patient 3 --episodes 2 --val-episodes 0 --adapt-steps 1 --meta-batch 1 "
    meta += "--backbone conv4-tiny --first-order --engine func"
    env = _env(
        CXR_DATA=str(dataset),
        CXR_WORK=str(work),
        LOG_DIR=str(logs),
        SHARDS="2",
        SIZE="32",
        SBATCH_ARGS=SBATCH_ARGS,
        TRAIN_ARGS="--model conv4-tiny --epochs 1 --max-steps 4 --batch-size 8",
        META_TRAIN_ARGS=meta,
        EVALUATE_ARGS="--queries 2 --images-per-patient 3",
        EPISODES="2",
    )
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(EXAMPLES / "pipeline.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    ids = dict(re.findall(r"([\w-]+)=(\d+)", done.stdout))
    assert list(ids) == ["preprocess", "merge", "train", "meta-train", "evaluate", "compare"], done.stdout
    states = _wait(list(ids.values()), logs)
    records = [r for rs in states.values() for r in rs]
    assert len(records) == 8  # 2 preprocess tasks, merge, train, meta-train, 2 evaluate tasks, compare
    assert all(r["JobState"] == "COMPLETED" for r in records), f"{_summary(states)}\n{_tails(logs)}"
    assert (work / "comparison" / "comparison.csv").is_file()
    assert (work / "runs" / "supervised" / "eval" / "summary.json").is_file()
    assert len(list(logs.glob("*.out"))) == 8
    assert not list(REPO.glob("slurm-*.out")) and not list(tmp_path.glob("slurm-*.out"))
    print(f"pipeline.sh on the local SLURM: {time.monotonic() - started:.0f} s")


def test_train_sbatch_preempted_by_usr1_requeues_and_ends_with_the_uninterrupted_weights(dataset, tmp_path):
    cache = tmp_path / "cache"
    preprocess(PreprocessConfig(src=dataset, output=cache, size=32, workers=0))
    run, log = tmp_path / "run", tmp_path / "train.out"
    env = _env(CXR_CACHE_DIR=str(cache), CXR_RUN=str(run), TRAIN_ARGS=TRAIN_ARGS)
    submit = ["sbatch", "--parsable", *SBATCH_ARGS.split(), "--chdir", str(tmp_path), "--output", str(log)]
    done = subprocess.run([*submit, str(EXAMPLES / "train.sbatch")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and metrics.read_bytes().count(b"\n") >= 3):
            assert time.monotonic() < deadline, _tails(tmp_path)
            assert not (log.is_file() and "Error:" in log.read_text()), log.read_text()
            time.sleep(0.1)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        # The job requeues itself; SLURM holds a requeued job ~2 minutes (its BeginTime): start it now.
        start_requeued_now(job)
        (record,) = _wait([job], tmp_path, timeout=600)[job]
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", _tails(tmp_path)
    text = log.read_text()
    assert "Stopped by SIGUSR1" in text and "Requeued SLURM job" in text and "(resumed)" in text, text

    # The same command, uninterrupted and outside SLURM, ends with the same weights.
    ref = tmp_path / "ref"
    args = [sys.executable, "-m", "cxr_tools", "-q", "train", str(cache), "-o", str(ref), "--classes", "base"]
    args += [*TRAIN_ARGS.split(), "--device", "cpu", "--threads", "1", "--workers", "0"]
    subprocess.run(args, cwd=tmp_path, env=_env(), check=True, capture_output=True, timeout=600)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    reference = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


def test_torchrun_sbatch_trains_with_two_gloo_ranks(dataset, tmp_path):
    cache = tmp_path / "cache"
    preprocess(PreprocessConfig(src=dataset, output=cache, size=32, workers=0))
    run, log = tmp_path / "run", tmp_path / "torchrun.out"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = _env(CXR_CACHE_DIR=str(cache), CXR_RUN=str(run), TORCHRUN=str(torchrun), NPROC_PER_NODE="2")
    env["TRAIN_ARGS"] = "--model conv4-tiny --epochs 1 --max-steps 4 --batch-size 8 --workers 0"
    submit = ["sbatch", "--parsable", "--wait", "--cpus-per-task=2", "--mem=1", "--chdir", str(tmp_path)]
    done = subprocess.run(
        [*submit, "--output", str(log), str(EXAMPLES / "torchrun.sbatch")], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stderr, log.read_text() if log.is_file() else "")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2
    assert "x 2 ranks" in log.read_text()
