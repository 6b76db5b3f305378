"""Real tiny data for the training tests: synthetic phantoms -> ``cxr preprocess`` (32 px) -> cache.

Import as ``from train_fixtures import ...`` after putting this folder on ``sys.path`` (the test files do).
A cache is built once per test session and directory and reused read-only by every test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
_BUILT: dict[str, Path] = {}


def synthetic_cache(root: Path, patients: int = 60, size: int = 32) -> Path:
    """A complete cache of ``patients`` synthetic NIH-layout patients, preprocessed to ``size`` px."""
    from cxr_tools.data.synthetic import SyntheticConfig, generate
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    key = f"{patients}-{size}"
    if key in _BUILT and (_BUILT[key] / "manifest.json").is_file():
        return _BUILT[key]
    src, cache = root / f"syn-{key}", root / f"cache-{key}"
    generate(SyntheticConfig(dest=src, patients=patients, size=max(32, size), seed=0))
    preprocess(PreprocessConfig(src=src, output=cache, size=size, workers=0))
    _BUILT[key] = cache
    return cache


def cxr_command(*args: str) -> list[str]:
    """The command line that runs ``cxr ARGS`` in a fresh interpreter."""
    return [sys.executable, "-m", "cxr_tools", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXR_PLAIN_PROGRESS": "1", "NO_COLOR": "1", **extra}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_JOB_ID"):
        env.pop(var, None)
    return env


def step_records(run: Path) -> int:
    """Number of complete ``step`` records in RUN/metrics.jsonl."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"kind": "step"' in line)


def run_until(cmd: list[str], run: Path, steps: int, timeout: float = 120.0) -> subprocess.Popen[str]:
    """Start ``cmd`` and return once RUN/metrics.jsonl holds ``steps`` step records (process still running)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env()
    )
    deadline = time.monotonic() + timeout
    while step_records(run) < steps:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"training ended before step {steps} (rc {proc.returncode}): {err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("training never reached the step")
        time.sleep(0.01)
    return proc


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(*args: str) -> list[str] | None:
    """``torchrun --nproc-per-node=2 -m cxr_tools ARGS`` on a free loopback port (None without torchrun)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        return None
    return [
        torchrun,
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "cxr_tools",
        *args,
    ]
