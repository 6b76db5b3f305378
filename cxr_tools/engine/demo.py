"""Engine of ``cxr demo``: the whole few-shot pipeline on the built-in synthetic dataset.

synthetic phantoms → ``preprocess`` → supervised base training (``train --classes base``) → Siamese network
(``train-siamese --classes base``) → MAML (plain, and initialised from the Siamese backbone) → ``evaluate``
every run plus the simple baselines on the *same* fixed meta-test episodes → ``compare``. The baselines: the
random-init ``scratch`` network with the MAML run's adaptation budget (``--match``), a logistic regression on the
support pixels (``pixels``) and one on the supervised base run's frozen features (``linear-probe``).

Every stage is a call of the same engine function the corresponding command uses, so the demo exercises the
real code paths, and each stage's output lands in the work directory where a user can rerun any command on
it. The budgets are small so the default run takes minutes on a 2-core laptop CPU (``--quick``: about a
minute); absolute AUCs are therefore modest, and the comparison says when differences are not significant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.compare import CompareConfig, compare
from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
from cxr_tools.engine.meta_train import MetaTrainConfig, meta_train
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess
from cxr_tools.engine.train import TrainConfig, train
from cxr_tools.engine.train_siamese import SiameseConfig, train_siamese
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.outputs import OutputSpec, prepare
from cxr_tools.runtime.progress import Progress, null_progress
from cxr_tools.runtime.signals import SignalInterrupt, received_signal

T = TypeVar("T")
#: The previous release's mark of a demo work directory (it recorded no list of the files it wrote).
LEGACY_DEMO_MARKER = ".cxr-demo"


def _legacy_demo(path: Path) -> None:
    """A demo work directory of the previous release holds no record of what it wrote: it is not replaced."""
    if (path / LEGACY_DEMO_MARKER).is_file():
        raise OutputExistsError(
            f"{path} is a demo work directory of an earlier cxr version, which recorded no list of its files.",
            "Delete it yourself, or choose another --workdir (--overwrite never deletes unrecorded files).",
        )


#: The demo's work directory: each stage's output inside it is a cxr output of its own, recorded as a folder of the
#: work directory, so ``--overwrite`` removes them (each by its own marker) and nothing else.
DEMO_SPEC = OutputSpec(command="demo", what="demo", recognise=_legacy_demo)


@dataclass(frozen=True)
class DemoConfig:
    """What ``cxr demo`` does and where (``quick`` shrinks every budget)."""

    workdir: Path = Path("cxr-demo")
    patients: int = 600
    size: int = 48
    seed: int = 0
    quick: bool = False
    episodes: int | None = None
    threads: int | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class DemoPlan:
    """The budgets of one demo run, derived from the config."""

    patients: int
    size: int
    backbone: str
    epochs: int
    meta_episodes: int
    eval_episodes: int
    ways: int = 2
    shots: int = 5
    queries: int = 10


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced: where, the final comparison, and seconds per stage."""

    workdir: Path
    dataset: Path
    cache: Path
    n_images: int
    n_patients: int
    label_counts: dict[str, int]
    runs: dict[str, Path]
    evaluations: dict[str, Path]
    comparison: Any
    plan: DemoPlan
    stages: dict[str, float] = field(default_factory=dict)


def make_plan(config: DemoConfig) -> DemoPlan:
    """Budgets: default fits ~10 minutes on 2 CPU cores, ``quick`` ~2 minutes."""
    if config.quick:
        plan = DemoPlan(
            patients=min(config.patients, 400),
            size=min(config.size, 32),
            backbone="conv4-tiny",
            epochs=2,
            meta_episodes=80,
            eval_episodes=30,
            queries=5,  # 400 patients: some classes have under 15 patients, and episodes are patient-disjoint
        )
    else:
        plan = DemoPlan(
            patients=config.patients, size=config.size, backbone="conv4", epochs=4, meta_episodes=480, eval_episodes=100
        )
    if config.episodes is not None:
        plan = DemoPlan(**{**plan.__dict__, "eval_episodes": config.episodes})
    return plan


def run_demo(config: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the pipeline in ``config.workdir`` (refused when it holds a previous demo, unless ``overwrite``)."""

    progress = null_progress(progress)
    plan = make_plan(config)
    work = Path(config.workdir)
    # a previous demo needs --overwrite, which removes what it recorded; a folder of other files is refused
    prepare(work, DEMO_SPEC, overwrite=config.overwrite)
    stages: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        out = fn()
        stages[name] = time.perf_counter() - start
        stopped = received_signal()  # a trainer returns after its checkpoint: the demo stops there too
        if stopped is not None:
            raise SignalInterrupt(stopped)
        return out

    data_dir, cache_dir, runs_dir = work / "data" / "synthetic-nih", work / "cache", work / "runs"
    synth = stage(
        "synthetic dataset",
        lambda: generate(
            SyntheticConfig(dest=data_dir, patients=plan.patients, size=max(64, plan.size * 2), seed=config.seed),
            progress,
        ),
    )
    stage(
        "preprocess",
        lambda: preprocess(
            PreprocessConfig(src=data_dir, output=cache_dir, size=plan.size, seed=config.seed, workers=0), progress
        ),
    )
    common: dict[str, Any] = {"seed": config.seed, "threads": config.threads, "device": "cpu"}
    runs = {
        "supervised": runs_dir / "supervised",
        "siamese": runs_dir / "siamese",
        "maml": runs_dir / "maml",
        "maml-siamese-init": runs_dir / "maml-siamese-init",
    }
    # Both base trainings share the cache, the base classes and the budget; only the network differs.
    base: dict[str, Any] = {
        "cache": cache_dir,
        "classes": ("base",),
        "epochs": plan.epochs,
        "batch_size": 32,
        "lr": 2e-3,
        **common,
    }
    stage(
        "supervised base training",
        lambda: train(TrainConfig(output=runs["supervised"], model=plan.backbone, balance="sampler", **base), progress),
    )
    # The cheapest baseline trained with a second seed too: compare groups the two runs, so that row's interval
    # includes the between-seed variance (docs/science.md, "Training seeds").
    runs["supervised-seed1"] = runs_dir / "supervised-seed1"
    stage(
        "supervised, second seed",
        lambda: train(
            TrainConfig(
                output=runs["supervised-seed1"],
                model=plan.backbone,
                balance="sampler",
                **{**base, "seed": config.seed + 1},
            ),
            progress,
        ),
    )
    stage(
        "siamese training",
        lambda: train_siamese(
            SiameseConfig(output=runs["siamese"], backbone=plan.backbone, embedding_dim=64, val_pairs=400, **base),
            progress,
        ),
    )
    meta: dict[str, Any] = {
        "ways": plan.ways,
        "shots": plan.shots,
        "queries": plan.queries,
        "episodes": plan.meta_episodes,
        "backbone": plan.backbone,
        "val_episodes": 0,
        "first_order": True,
        "inner_lr": 0.05,
        "adapt_steps": 5,
        "meta_lr": 0.002,
        "engine": "auto",
    }
    stage("MAML", lambda: meta_train(MetaTrainConfig(cache=cache_dir, output=runs["maml"], **meta, **common), progress))
    stage(
        "MAML from Siamese",
        lambda: meta_train(
            MetaTrainConfig(
                cache=cache_dir,
                output=runs["maml-siamese-init"],
                init=str(runs["siamese"]),
                **{**meta, "backbone": None},
                **common,
            ),
            progress,
        ),
    )

    episode: dict[str, Any] = {
        "episodes": plan.eval_episodes,
        "ways": plan.ways,
        "shots": plan.shots,
        "queries": plan.queries,
        "seed": config.seed,
        "device": "cpu",
        "threads": config.threads,
    }
    evals = {name: path / "eval" for name, path in runs.items()}
    baselines = {
        "scratch": EvaluateConfig(
            data=cache_dir, method="scratch", match=runs["maml"], output=work / "eval-scratch", **episode
        ),
        "pixels": EvaluateConfig(data=cache_dir, method="pixels", output=work / "eval-pixels", **episode),
        "linear-probe": EvaluateConfig(
            data=cache_dir,
            run=runs["supervised"],
            method="linear-probe",
            output=runs["supervised"] / "eval-linear-probe",
            **episode,
        ),
    }
    start = time.perf_counter()
    for name, path in runs.items():
        evaluate(EvaluateConfig(data=cache_dir, run=path, output=evals[name], **episode), progress)
    for name, cfg in baselines.items():
        evals[name] = evaluate(cfg, progress).output
    stages[f"evaluate ({len(evals)} methods)"] = time.perf_counter() - start
    comparison = stage("compare", lambda: compare(CompareConfig(inputs=tuple(evals.values()), output=work / "compare")))
    return DemoResult(
        workdir=work,
        dataset=data_dir,
        cache=cache_dir,
        n_images=synth.n_images,
        n_patients=synth.n_patients,
        label_counts=dict(synth.label_counts),
        runs=runs,
        evaluations=evals,
        comparison=comparison,
        plan=plan,
        stages=stages,
    )
