"""Does meta-training learn? MAML vs a randomly initialised model on the same meta-test episodes.

On the synthetic phantoms: write a dataset, preprocess it, meta-train with
``cxr meta-train``'s engine on the meta-train (base) classes, then adapt both the meta-trained model and a randomly
initialised model of the same architecture with the *same* inner loop (lr, steps) on the *same* fixed, seeded
episodes of the meta-test classes (drawn from the meta-test pool, which meta-training never read), and report the
mean per-episode query AUC of each with its 95% CI and the paired difference.

    python benchmarks/meta_learning_check.py [--patients 500] [--size 64] [--episodes 400] [--test-episodes 100]
                                             [--workdir DIR] [--json out.json]

:func:`run_check` is the reusable experiment (the slow test calls it with a small configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Where the benchmark departs from `cxr meta-train`'s defaults (MetaTrainConfig): a few minutes on a laptop CPU.
META_DEFAULTS: dict[str, Any] = {"backbone": "conv4", "episodes": 400, "engine": "func", "val_episodes": 0}
# The MetaTrainConfig fields this script's command line sets (``--inner-lr`` ...).
META_FLAGS = (
    "ways", "shots", "queries", "inner_lr", "adapt_steps", "meta_lr", "meta_batch", "episodes", "first_order",
    "backbone", "engine", "val_every", "val_episodes",
)  # fmt: skip


@dataclass(frozen=True)
class CheckConfig:
    """The experiment's knobs: the data, the meta-test episodes, and ``meta``, MetaTrainConfig fields that
    replace :data:`META_DEFAULTS` and the command's defaults (the inner loop is the same for both inits)."""

    workdir: Path
    patients: int = 500
    size: int = 64
    test_episodes: int = 100
    seed: int = 0
    threads: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    maml_auc: float
    maml_ci95: float
    scratch_auc: float
    scratch_ci95: float
    diff: float
    diff_ci95: float
    p_value: float
    n_episodes: int
    test_episodes_hash: str
    meta_train_seconds: float
    tasks_per_second: float
    config: dict[str, Any]

    def lines(self) -> list[str]:
        return [
            f"meta-test AUC, MAML init     : {self.maml_auc:.3f} ± {self.maml_ci95:.3f} (95% CI, {self.n_episodes} "
            f"episodes {self.test_episodes_hash})",
            f"meta-test AUC, random init   : {self.scratch_auc:.3f} ± {self.scratch_ci95:.3f}",
            f"paired difference MAML-random: {self.diff:+.3f} ± {self.diff_ci95:.3f} (p = {self.p_value:.2g})",
            f"meta-training: {self.meta_train_seconds:.0f} s, {self.tasks_per_second:.2f} tasks/s",
        ]


def make_cache(workdir: Path, patients: int, size: int, seed: int) -> Path:
    """Synthetic phantoms → preprocessed cache (reused when already there)."""
    from cxr_tools.data.caches.format import is_complete
    from cxr_tools.data.synthetic import SyntheticConfig, generate
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    cache = workdir / f"cache-{patients}p-{size}px-s{seed}"
    if is_complete(cache):
        return cache
    data = workdir / f"synthetic-{patients}p-{size}px-s{seed}"
    generate(SyntheticConfig(dest=data, patients=patients, size=size, seed=seed, overwrite=True))
    preprocess(PreprocessConfig(src=data, output=cache, size=size, workers=0, seed=seed, overwrite=True))
    return cache


def run_check(cfg: CheckConfig) -> CheckResult:
    """Meta-train, then evaluate MAML and random init on the same fixed meta-test episodes."""
    import numpy as np
    import torch

    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.data.sampling.episodes import EpisodeSpec, episode_list_hash, index_patients
    from cxr_tools.data.sampling.meta_samplers import meta_split_sampler
    from cxr_tools.data.splits.meta import meta_split_pools, resolve_meta_split
    from cxr_tools.engine.meta_train import MetaTrainConfig, meta_train
    from cxr_tools.eval.metrics import mean_ci, paired_difference
    from cxr_tools.methods.episodes import evaluate_episodes
    from cxr_tools.methods.maml import MamlConfig
    from cxr_tools.models import create_model, load_model_dir
    from cxr_tools.runtime.seeding import seed_everything

    torch.set_num_threads(cfg.threads)
    cache_dir = make_cache(cfg.workdir, cfg.patients, cfg.size, cfg.seed)
    run_dir = cfg.workdir / "maml-run"
    mt = MetaTrainConfig(
        cache=cache_dir,
        output=run_dir,
        seed=cfg.seed,
        device="cpu",
        threads=cfg.threads,
        log_every_steps=5,
        overwrite=True,
        **{**META_DEFAULTS, **cfg.meta},
    )
    started = time.perf_counter()
    trained = meta_train(mt)
    seconds = time.perf_counter() - started
    maml_model, _ = load_model_dir(run_dir)

    cache = open_cache(cache_dir)
    split = resolve_meta_split("auto", cache_dir, cache.labels)
    raw = cache.raw_labels()
    pools = meta_split_pools(cache.index, cache.labels, split, seed=0)
    spec = EpisodeSpec(mt.ways, mt.shots, mt.queries)
    sampler = meta_split_sampler(raw, cache.labels, split, pools, "test", spec, patients=index_patients(cache.index))
    episodes = sampler.fixed_list(cfg.test_episodes, seed=12345)

    seed_everything(cfg.seed + 1)
    scratch = create_model(mt.backbone, num_classes=mt.ways)
    inner = MamlConfig(mt.inner_lr, mt.adapt_steps, False, "func")
    device = torch.device("cpu")
    a = np.array([r["auc"] for r in evaluate_episodes(maml_model, cache, episodes, inner, device)])
    b = np.array([r["auc"] for r in evaluate_episodes(scratch, cache, episodes, inner, device)])
    ma, mb, d = mean_ci(a), mean_ci(b), paired_difference(a, b)
    return CheckResult(
        maml_auc=ma.mean,
        maml_ci95=ma.ci95,
        scratch_auc=mb.mean,
        scratch_ci95=mb.ci95,
        diff=d.mean,
        diff_ci95=d.ci95,
        p_value=d.p_value,
        n_episodes=ma.n,
        test_episodes_hash=episode_list_hash(episodes, cache.manifest_hash),
        meta_train_seconds=seconds,
        tasks_per_second=trained.tasks_per_second,
        config={
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "meta": {name: getattr(mt, name) for name in META_FLAGS},
        },
    )


def main(argv: list[str] | None = None) -> int:
    from cxr_tools.engine.meta_train import MetaTrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = CheckConfig(workdir=Path("."))
    for name in ("patients", "size", "test_episodes", "seed", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(data, name))
    meta = MetaTrainConfig(cache=Path("."), output=Path("."), **META_DEFAULTS)
    for name in META_FLAGS:
        default = getattr(meta, name)
        if isinstance(default, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=default)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep data and run here (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the result as JSON.")
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in {"workdir", "json", *META_FLAGS}}
    values["meta"] = {name: getattr(args, name) for name in META_FLAGS}
    with tempfile.TemporaryDirectory(prefix="cxr-mlcheck-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_check(CheckConfig(workdir=workdir, **values))
    for line in result.lines():
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.diff > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
