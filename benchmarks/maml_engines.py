"""Tasks per second of a bare learn2learn loop and of each MAML engine side by side, at meta-batch 1 and 4.

Setting: a conv4 backbone (4 × [conv3×3 64, GroupNorm(8), ReLU, maxpool 2]) on
84×84 one-channel images, 2-way 7-shot episodes (+7 negatives: 21 support images) with 15 queries per class
(+15 negatives: 45 query images), 5 inner SGD steps, Adam outer step, float32, CPU by default.
Each runner first does a one-task, one-step meta-step (imports, allocator), then ``--repeats`` full meta-steps in
interleaved rounds, so that load changes on a shared machine hit all runners alike; the median is reported.
``l2l-bare`` is a hand-written learn2learn loop (clone/adapt/backward per task) with no cxr-tools code in it: the
reference every ratio is taken against. ``vmap`` runs a meta-batch's tasks as one batched computation.

``--extras`` adds the engine-tuning measurements, each short and side by side with its baseline: channels_last
(model and images), 1 vs 2 intra-op threads, ``torch.inference_mode`` vs ``torch.no_grad`` for scoring queries
with adapted weights (the eval-only path), and ``torch.compile`` of the functional forward in the inner loop
(first order only: compiled graphs do not support the double backward of second order), compile time included,
and conv4's 2×2 max-pool without autograd (``--pooling`` measures only that): PyTorch's kernel vs the zoo's.

Threads: the run sets ``torch.set_num_threads(--threads)``; also export ``OMP_NUM_THREADS`` to the same value
before starting Python (``OMP_NUM_THREADS=2 python benchmarks/maml_engines.py``) so OpenMP sizes its pool alike.

    python benchmarks/maml_engines.py [--repeats 1] [--threads 2] [--device cpu] [--orders first second]
        [--meta-batches 1 4] [--engines learn2learn func vmap] [--extras] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cxr_tools.methods.maml import MamlConfig, import_learn2learn, meta_step

WAYS, SHOTS, QUERIES, STEPS, META_BATCH, SIZE, INNER_LR = 2, 7, 15, 5, 4, 84, 0.01
ENGINES = ("learn2learn", "higher", "func", "vmap")
DEFAULT_ENGINES = ("learn2learn", "func", "vmap")


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


def make_tasks(seed: int, device: torch.device, meta_batch: int = META_BATCH) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(*make_set(g, SHOTS, device), *make_set(g, QUERIES, device)) for _ in range(meta_batch)]


def bare_learn2learn_step(
    model: nn.Module, opt: torch.optim.Optimizer, tasks, first_order: bool, steps: int = STEPS
) -> None:
    l2l = import_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
    opt.zero_grad()
    for sx, sy, qx, qy in tasks:
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.binary_cross_entropy_with_logits(learner(sx), sy))
        (F.binary_cross_entropy_with_logits(learner(qx), qy) / len(tasks)).backward()
    opt.step()


def time_runners(runners: dict[str, Callable[[list], None]], tasks: list, repeats: int) -> dict[str, dict[str, float]]:
    """Per runner: tasks/s over wall time and CPU-seconds per task (this process, all threads), medians over
    ``repeats`` interleaved rounds in rotated order. On a machine other jobs load, CPU time per task still
    compares the work done; wall time also shows how well the threads were used."""
    names = list(runners)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            runners[name](tasks)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        n: {
            "tasks_per_s": len(tasks) / statistics.median(wall[n]),
            "cpu_s_per_task": statistics.median(cpu[n]) / len(tasks),
        }
        for n in names
    }


def engine_runner(
    engine: str, first_order: bool, device: torch.device, *, channels_last: bool = False
) -> Callable[[list], None]:
    """A fresh conv4 + Adam, warmed up by a one-task one-step meta-step; returns ``tasks -> None`` (one meta-step)."""
    torch.manual_seed(0)
    model = conv4().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(tasks: list, steps: int = STEPS) -> None:
        if channels_last:
            tasks = [tuple(_channels_last(t) for t in task) for task in tasks]
        if engine == "l2l-bare":
            bare_learn2learn_step(model, opt, tasks, first_order, steps)
        else:
            meta_step(model, opt, tasks, MamlConfig(INNER_LR, steps, first_order, engine))
        sync()

    step(make_tasks(99, device, 1), 1)
    return step


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def run(
    repeats: int,
    device: torch.device,
    engines: tuple[str, ...],
    orders: tuple[str, ...],
    meta_batches: tuple[int, ...],
    channels_last: bool = False,
) -> dict:
    """``{order: {meta_batch: {runner: {tasks_per_s, vs_bare, ...}}}}`` for ``l2l-bare`` and each engine (and each
    engine on channels_last model and images, ``ENGINE+cl``, with ``channels_last``)."""
    results: dict = {}
    for order in orders:
        first_order = order == "first"
        runners = {e: engine_runner(e, first_order, device) for e in ("l2l-bare", *engines)}
        if channels_last:
            runners |= {f"{e}+cl": engine_runner(e, first_order, device, channels_last=True) for e in engines}
        results[order] = {}
        for mb in meta_batches:
            rates = time_runners(runners, make_tasks(0, device, mb), repeats)
            bare = rates["l2l-bare"]
            results[order][mb] = {
                e: {
                    **r,
                    "vs_bare": r["tasks_per_s"] / bare["tasks_per_s"],
                    "cpu_vs_bare": bare["cpu_s_per_task"] / r["cpu_s_per_task"],
                }
                for e, r in rates.items()
            }
            for e, row in results[order][mb].items():
                print(
                    f"| {order} | {mb} | {e} | {row['tasks_per_s']:.3f} | {row['vs_bare']:.2f} | "
                    f"{row['cpu_s_per_task']:.1f} | {row['cpu_vs_bare']:.2f} |",
                    flush=True,
                )
    return results


def extras(repeats: int, threads: int, device: torch.device) -> dict:
    """Engine tuning, first order at meta-batch 4 (short): channels_last, threads, inference_mode, compile.

    Each measurement is printed as soon as it is taken (a later one may be slow, or fail, e.g. torch.compile).
    """
    tasks = make_tasks(0, device)
    out: dict = {}

    def record(name: str, values: dict[str, float]) -> None:
        out[name] = values
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()), flush=True)

    for engine in ("func", "vmap"):
        rates = time_runners(
            {
                "contiguous": engine_runner(engine, True, device),
                "channels_last": engine_runner(engine, True, device, channels_last=True),
            },
            tasks,
            repeats,
        )
        record(f"channels_last ({engine}) tasks/s", {k: v["tasks_per_s"] for k, v in rates.items()})
        record(f"channels_last ({engine}) CPU s/task", {k: v["cpu_s_per_task"] for k, v in rates.items()})
    per_thread = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        per_thread[f"{n} thread(s)"] = time_runners({"func": engine_runner("func", True, device)}, tasks, repeats)[
            "func"
        ]["tasks_per_s"]
    torch.set_num_threads(threads)
    record("threads (func) tasks/s", per_thread)
    record("query scoring images/s", scoring_modes(device, repeats))
    record("max-pool 2x2 without autograd, ms per conv4 forward", pooling(device, repeats))
    record("torch.compile (func, first order)", compiled_inner_loop(device, tasks))
    return out


def scoring_modes(device: torch.device, repeats: int) -> dict[str, float]:
    """Images/s scoring 45 query images with adapted weights under ``no_grad`` vs ``inference_mode``."""
    from cxr_tools.methods.maml import adapt

    torch.manual_seed(0)
    model = conv4().to(device).eval()
    sx, sy, qx, _ = make_tasks(0, device, 1)[0]
    adapted = adapt(model, sx, sy, MamlConfig(INNER_LR, STEPS, True, "func"))
    rates: dict[str, list[float]] = {"no_grad": [], "inference_mode": []}
    for _ in range(max(repeats, 3)):
        for mode, ctx in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
            with ctx():
                start = time.perf_counter()
                adapted(qx)
                rates[mode].append(len(qx) / (time.perf_counter() - start))
    return {m: statistics.median(r) for m, r in rates.items()}


def pooling(device: torch.device, repeats: int, images: int = 45) -> dict[str, float]:
    """Milliseconds of conv4's four 2×2 max-pools on ``images`` query images (the four block outputs, 64 channels)
    without autograd: ``nn.MaxPool2d(2)`` (PyTorch's kernel) vs the zoo's :class:`MaxPool2x2` (two element-wise
    maxima of strided views; the same values), median of ``max(repeats, 5)`` alternating rounds."""
    from cxr_tools.models.backbones import MaxPool2x2

    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(images, 64, SIZE >> k, SIZE >> k, generator=g).to(device) for k in range(4)]
    pools = {"nn.MaxPool2d": nn.MaxPool2d(2), "MaxPool2x2": MaxPool2x2()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in pools}
    with torch.no_grad():
        for _ in range(max(repeats, 5)):
            for name, pool in pools.items():
                start = time.perf_counter()
                for x in inputs:
                    pool(x)
                sync()
                times[name].append((time.perf_counter() - start) * 1000)
    out = {name: statistics.median(t) for name, t in times.items()}
    out["ratio"] = out["nn.MaxPool2d"] / out["MaxPool2x2"]
    return out


def compiled_inner_loop(device: torch.device, tasks: list) -> dict[str, float]:
    """First-order tasks/s with the functional forward eager vs ``torch.compile``-d, and the compile time (s)."""
    from cxr_tools.methods.maml.functional import trainable_params

    torch.manual_seed(0)
    model = conv4().to(device)

    def eager(p: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (x,))

    def task_rate(forward: Callable) -> float:
        start = time.perf_counter()
        for sx, sy, qx, qy in tasks:
            params = trainable_params(model)
            for _ in range(STEPS):
                loss = F.binary_cross_entropy_with_logits(forward(params, sx), sy)
                grads = torch.autograd.grad(loss, list(params.values()))
                params = {n: p - INNER_LR * g for (n, p), g in zip(params.items(), grads, strict=True)}
            F.binary_cross_entropy_with_logits(forward(params, qx), qy).backward()
        return len(tasks) / (time.perf_counter() - start)

    compiled = torch.compile(eager)
    start = time.perf_counter()
    task_rate(compiled)  # the first pass compiles the forward and backward graphs
    compile_s = time.perf_counter() - start
    return {
        "eager tasks/s": task_rate(eager),
        "compiled tasks/s": task_rate(compiled),
        "first compiled pass (s, compile included)": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed meta-steps per runner, meta-batch and order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--orders", nargs="+", choices=("second", "first"), default=["second", "first"])
    parser.add_argument("--meta-batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(DEFAULT_ENGINES))
    parser.add_argument("--channels-last", action="store_true", help="also time each engine on channels_last")
    parser.add_argument("--extras", action="store_true", help="also measure channels_last, threads, compile, ...")
    parser.add_argument("--pooling", action="store_true", help="only measure the 2x2 max-pool without autograd")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.pooling:
        print("max-pool 2x2 without autograd, ms per conv4 forward:", pooling(device, args.repeats))
        return
    began, load_before = time.perf_counter(), _load()
    print(
        f"MAML engines: conv4 {SIZE}px, {WAYS}-way {SHOTS}-shot (+negatives), {QUERIES} queries, {STEPS} steps, "
        f"{args.threads} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {device}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.repeats} round(s)"
    )
    print("| order | meta-batch | runner | tasks/s | ÷ bare learn2learn | CPU s/task | bare's CPU s ÷ this |")
    print("|---|---:|---|---:|---:|---:|---:|", flush=True)
    results = run(
        args.repeats, device, tuple(args.engines), tuple(args.orders), tuple(args.meta_batches), args.channels_last
    )
    extra = extras(args.repeats, args.threads, device) if args.extras else {}
    print(f"(took {time.perf_counter() - began:.0f} s; load average before/after: {load_before} / {_load()})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"device": str(device), "threads": args.threads, "results": results, "extras": extra}, fh, indent=2
            )


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
