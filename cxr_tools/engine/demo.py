"""Engine of ``cxr demo``: the pipeline on the built-in synthetic dataset.

First form (foundation): writes the synthetic dataset into the work directory and summarises it. Later
stages (preprocess, training, meta-training, evaluation, comparison) are appended as they land.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.runtime.progress import Progress, null_progress


@dataclass(frozen=True)
class DemoConfig:
    """What ``cxr demo`` does and where."""

    workdir: Path = Path("cxr-demo")
    patients: int = 120
    size: int = 128
    seed: int = 0
    quick: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced."""

    workdir: Path
    dataset: Path
    n_images: int
    n_patients: int
    label_counts: dict[str, int]
    stages: dict[str, float] = field(default_factory=dict)


def run_demo(config: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the demo pipeline in ``config.workdir``; each stage's seconds are reported in the result."""
    progress = null_progress(progress)
    patients = max(20, config.patients // 3) if config.quick else config.patients
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    dataset = config.workdir / "data" / "synthetic-nih"
    synth = generate(
        SyntheticConfig(
            dest=dataset, patients=patients, size=config.size, seed=config.seed, overwrite=config.overwrite
        ),
        progress,
    )
    stages["synthetic dataset"] = time.perf_counter() - t0
    return DemoResult(
        workdir=config.workdir,
        dataset=dataset,
        n_images=synth.n_images,
        n_patients=synth.n_patients,
        label_counts=dict(synth.label_counts),
        stages=stages,
    )
