"""Tasks per second of ``cxr meta-train``'s engine ÷ a bare learn2learn loop; goal ≥ 1.0.

Setting: conv4 (the zoo's, GroupNorm) on 84 px images, 2-way 7-shot episodes with 15 queries per class (support
21 images, query 45 with the negatives), 5 inner steps, meta-batch 4, Adam, float32, second and first order.

* ``bare l2l``: ``l2l.algorithms.MAML(model)`` → per task ``clone()``, 5 × ``adapt()``, query loss ``backward()``,
  then ``opt.step()``, on tensors of the same shapes already in memory — no sampling, no cache, no checkpoints.
* ``cxr meta-train (ENGINE)``: :func:`cxr_tools.engine.meta_train.meta_train` on a synthetic 84 px cache (episodes
  sampled from the index, images read from HDF5, metrics, checkpoints), validation off; tasks over the training
  loop's wall time (:attr:`MetaTrainResult.tasks_per_second`), once per engine (learn2learn, higher, func).

Measurements run in interleaved rounds (this machine is shared and noisy); each figure is the median over rounds.

    python benchmarks/meta_train.py [--tasks 24] [--rounds 2] [--threads 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

WAYS, SHOTS, QUERIES, STEPS, META_BATCH, SIZE, INNER_LR = 2, 7, 15, 5, 4, 84, 0.01
ENGINES = ("learn2learn", "higher", "func")


def make_cache(workdir: Path) -> Path:
    """A synthetic NIH-layout dataset at 84 px, preprocessed (enough meta-train positives for 7 + 15)."""
    from cxr_tools.data.synthetic import SyntheticConfig, generate
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    data, cache = workdir / "synthetic", workdir / "cache"
    generate(SyntheticConfig(dest=data, patients=450, size=SIZE, seed=0, overwrite=True))
    preprocess(PreprocessConfig(src=data, output=cache, size=SIZE, workers=0, overwrite=True))
    return cache


def bare_learn2learn(tasks: int, first_order: bool, device: str) -> float:
    """Tasks/s of a hand-written learn2learn loop on in-memory tensors (the reference)."""
    import torch
    import torch.nn.functional as F

    from cxr_tools.methods.maml import import_learn2learn
    from cxr_tools.models import create_model

    l2l = import_learn2learn()
    torch.manual_seed(0)
    model = create_model("conv4", num_classes=WAYS).to(device)
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def make(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = per_class * (WAYS + 1)
        y = torch.zeros(n, WAYS)
        for c in range(WAYS):
            y[c * per_class : (c + 1) * per_class, c] = 1.0
        return torch.rand(n, 1, SIZE, SIZE, generator=g).to(device), y.to(device)

    batch = [(*make(SHOTS), *make(QUERIES)) for _ in range(META_BATCH)]
    steps = -(-tasks // META_BATCH)

    def step() -> None:
        opt.zero_grad()
        for sx, sy, qx, qy in batch:
            learner = maml.clone()
            for _ in range(STEPS):
                learner.adapt(F.binary_cross_entropy_with_logits(learner(sx), sy))
            (F.binary_cross_entropy_with_logits(learner(qx), qy) / META_BATCH).backward()
        opt.step()

    step()  # warm-up (first-call costs of autograd and the optimizer)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * META_BATCH / (time.perf_counter() - start)


def cxr_engine(cache: Path, out: Path, tasks: int, first_order: bool, engine: str, device: str, threads: int) -> float:
    """Tasks/s of ``cxr meta-train``'s engine (training loop wall time, validation off)."""
    from cxr_tools.engine.meta_train import MetaTrainConfig, meta_train

    cfg = MetaTrainConfig(
        cache=cache, output=out, ways=WAYS, shots=SHOTS, queries=QUERIES, inner_lr=INNER_LR, adapt_steps=STEPS,
        meta_batch=META_BATCH, episodes=tasks, first_order=first_order, backbone="conv4", engine=engine,
        meta_split="metachest", val_episodes=0, device=device, threads=threads, log_every_steps=10, overwrite=True,
    )  # fmt: skip
    result = meta_train(cfg)
    if result.status != "completed":
        raise RuntimeError(f"meta-train did not complete: {result.status}")
    return result.tasks_per_second


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24, help="Tasks per measurement (multiple of 4).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    engines = [e for e in args.engines.split(",") if e]
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-mt-") as tmp:
        cache = make_cache(Path(tmp))
        cxr_engine(cache, Path(tmp) / "warm", 4, True, "func", args.device, args.threads)  # imports, first calls
        for rnd in range(args.rounds):
            for order in ("second", "first"):
                fo = order == "first"
                row = results.setdefault(order, {})
                row.setdefault("bare l2l", []).append(bare_learn2learn(args.tasks, fo, args.device))
                for engine in engines:
                    tps = cxr_engine(cache, Path(tmp) / "run", args.tasks, fo, engine, args.device, args.threads)
                    row.setdefault(f"cxr meta-train ({engine})", []).append(tps)
                print(f"round {rnd + 1}/{args.rounds} {order} order done", file=sys.stderr)
    summary: dict[str, dict[str, float]] = {}
    cpu = platform.processor() or platform.machine()
    print(f"conv4 {SIZE}px, {WAYS}-way {SHOTS}-shot {QUERIES}-query, {STEPS} steps, meta-batch {META_BATCH}, ")
    print(f"{args.threads} threads, {args.device}, {cpu}, torch {torch.__version__}")
    print(f"{'order':<7} {'runner':<28} {'tasks/s':>8} {'÷ bare':>7}")
    for order, row in results.items():
        bare = statistics.median(row["bare l2l"])
        summary[order] = {}
        for name, values in row.items():
            tps = statistics.median(values)
            summary[order][name] = tps
            print(f"{order:<7} {name:<28} {tps:>8.2f} {tps / bare:>7.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"tasks_per_second": summary, "raw": results, "args": vars(args)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
