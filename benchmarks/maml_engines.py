"""Tasks per second of the three MAML engines side by side, second and first order.

Setting: a conv4 backbone (4 × [conv3×3 64, GroupNorm(8), ReLU, maxpool 2]) on
84×84 one-channel images, 2-way 7-shot episodes (+7 negatives: 21 support images) with 15 queries per class
(+15 negatives: 45 query images), 5 inner SGD steps, meta-batch 4, Adam outer step, float32, 2 CPU threads.
Each engine first runs a one-task, one-step meta-step (imports, allocator), then ``--repeats`` full meta-steps in
interleaved rounds, so that load changes on a shared machine hit all engines alike; the median is reported.
``--bare`` adds ``l2l-bare``, a hand-written learn2learn loop (clone/adapt/backward per task) with no cxr-tools
code in it, to show the wrapper's overhead.

    python benchmarks/maml_engines.py [--repeats 1] [--threads 2] [--device cpu] [--bare] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cxr_tools.methods.maml import MamlConfig, import_learn2learn, meta_step

WAYS, SHOTS, QUERIES, STEPS, META_BATCH, SIZE, INNER_LR = 2, 7, 15, 5, 4, 84, 0.01
ENGINES = ("learn2learn", "higher", "func")


def conv4(ways: int = WAYS) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.ReLU(), nn.MaxPool2d(2)]
        channels = 64
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 5 * 5, ways))


def make_set(g: torch.Generator, per_class: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` positives of each class plus ``per_class`` negatives, multi-hot targets."""
    n = per_class * (WAYS + 1)
    y = torch.zeros(n, WAYS)
    for c in range(WAYS):
        y[c * per_class : (c + 1) * per_class, c] = 1.0
    # A little co-occurrence among positives, as in real multi-label data; negatives stay all-zero.
    extra = (torch.rand(n, WAYS, generator=g) < 0.1).float() * (y.sum(1, keepdim=True) > 0)
    y = torch.maximum(y, extra)
    x = torch.randn(n, 1, SIZE, SIZE, generator=g)
    return x.to(device), y.to(device)


def make_tasks(seed: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(*make_set(g, SHOTS, device), *make_set(g, QUERIES, device)) for _ in range(META_BATCH)]


def bare_learn2learn_step(model: nn.Module, opt: torch.optim.Optimizer, tasks, first_order: bool) -> None:
    l2l = import_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
    opt.zero_grad()
    for sx, sy, qx, qy in tasks:
        learner = maml.clone()
        for _ in range(STEPS):
            learner.adapt(F.binary_cross_entropy_with_logits(learner(sx), sy))
        (F.binary_cross_entropy_with_logits(learner(qx), qy) / len(tasks)).backward()
    opt.step()


def one_step(engine: str, model: nn.Module, opt: torch.optim.Optimizer, tasks, cfg: MamlConfig) -> float:
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    if engine == "l2l-bare":
        bare_learn2learn_step(model, opt, tasks, cfg.first_order)
    else:
        meta_step(model, opt, tasks, MamlConfig(cfg.inner_lr, cfg.adapt_steps, cfg.first_order, engine))
    sync()
    return time.perf_counter() - start


def run(repeats: int, threads: int, device: torch.device, bare: bool) -> dict:
    torch.set_num_threads(threads)
    engines = (*ENGINES, "l2l-bare") if bare else ENGINES
    tasks = make_tasks(0, device)
    results: dict = {}
    for first_order in (False, True):
        setups = {}
        for engine in engines:
            torch.manual_seed(0)
            model = conv4().to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            one_step(engine, model, opt, tasks[:1], MamlConfig(INNER_LR, 1, first_order))  # warm-up
            setups[engine] = (model, opt)
        times: dict[str, list[float]] = {e: [] for e in engines}
        for r in range(repeats):
            for engine in engines[r % len(engines) :] + engines[: r % len(engines)]:
                model, opt = setups[engine]
                times[engine].append(one_step(engine, model, opt, tasks, MamlConfig(INNER_LR, STEPS, first_order)))
        rates = {e: META_BATCH / statistics.median(t) for e, t in times.items()}
        results["first" if first_order else "second"] = {
            e: {"tasks_per_s": rates[e], "vs_learn2learn": rates[e] / rates["learn2learn"]} for e in engines
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed meta-steps (of 4 tasks) per engine and order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bare", action="store_true", help="also time a bare learn2learn loop")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    began, load_before = time.perf_counter(), _load()
    results = run(args.repeats, args.threads, device, args.bare)
    print(
        f"MAML engines: conv4 {SIZE}px, {WAYS}-way {SHOTS}-shot (+negatives), {QUERIES} queries, {STEPS} steps, "
        f"meta-batch {META_BATCH}, {args.threads} threads, {device}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| order | engine | tasks/s | ÷ learn2learn |")
    print("|---|---|---:|---:|")
    for order, rows in results.items():
        for engine, row in rows.items():
            print(f"| {order} | {engine} | {row['tasks_per_s']:.2f} | {row['vs_learn2learn']:.2f} |")
    print(f"(took {time.perf_counter() - began:.0f} s; load average before/after: {load_before} / {_load()})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"device": str(device), "threads": args.threads, "results": results}, fh, indent=2)


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
