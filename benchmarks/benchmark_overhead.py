"""Overhead of ``cxr benchmark run`` over running the same ``cxr`` command lines by hand, side by side.

    .venv/bin/python benchmarks/benchmark_overhead.py [--plan examples/benchmark/phantoms.yaml]
        [--methods pixels,linear-probe] [--work DIR] [--rounds 2]

The phantom dataset of the plan's header is built once (``cxr download synthetic`` + ``cxr preprocess``, 400
patients, 32 px). Each round copies the plan with its ``cache`` pointed there and its ``output`` into a fresh
folder (``--methods`` keeps a subset of its methods). Rounds run in the order hand, runner, runner, hand (ABBA, so
a drifting load on a shared machine cancels out): *by hand* runs every step's command line exactly as the
benchmark would (:func:`cxr_tools.benchmark.steps.expand`, ``--resume`` included) as a plain ``cxr`` subprocess in
dependency order; *runner* is ``cxr benchmark run``. Printed: wall and CPU time (of the whole process tree) of
each round and the difference of the sums (the goal is < 2 %); the runner's own wall time, i.e. its wall time
minus the wall time of the commands it ran (each step's state records it), which does not depend on how long the
commands happened to take on a busy machine; and the fixed cost of a rerun with every step done (planning and
state checks, no command run).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ORDER = ("hand", "runner", "runner", "hand")


def cxr(*args: str, log: Path | None = None) -> tuple[float, float]:
    """Run ``cxr ARGS`` (output to ``log`` or discarded); its wall time and the CPU time of its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "ab") if log else open("/dev/null", "wb") as fh:
        done = subprocess.run([sys.executable, "-m", "cxr_tools", *args], stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"cxr {' '.join(args)} exited {done.returncode} (log: {log})")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def plan_copy(source: Path, dest: Path, cache: Path, output: Path, methods: list[str] | None) -> Path:
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    data.update(cache=str(cache), output=str(output))
    if methods:
        data["methods"] = {k: v for k, v in data["methods"].items() if k in methods}
        if data.get("reference") not in data["methods"]:
            data["reference"] = next(iter(data["methods"]))
        for spec in data["methods"].values():  # scratch may match a method left out
            if isinstance(spec, dict) and spec.get("match") not in (None, *data["methods"]):
                spec.pop("match")
                spec.setdefault("evaluate", {}).update(adapt_steps=5, inner_lr=0.05)
    dest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, default=REPO / "examples" / "benchmark" / "phantoms.yaml")
    parser.add_argument("--methods", default="", help="Comma-separated subset of the plan's methods.")
    parser.add_argument("--work", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2, help="1: hand, runner; 2: ABBA.")
    args = parser.parse_args()

    from cxr_tools.benchmark.plan import load_plan
    from cxr_tools.benchmark.state import all_states
    from cxr_tools.benchmark.steps import command_line, expand
    from cxr_tools.cli.benchmark import command_flags

    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-bench-overhead-"))
    cache = work / "cache"
    if not (cache / "manifest.json").is_file():
        cxr("download", "synthetic", "-o", str(work / "data"), "--patients", "400", "--size", "64", "--overwrite")
        cxr("preprocess", str(work / "data"), "-o", str(cache), "--size", "32", "--overwrite")
    methods = [m for m in args.methods.split(",") if m] or None
    walls: dict[str, list[float]] = {"hand": [], "runner": []}
    cpus: dict[str, list[float]] = {"hand": [], "runner": []}
    own, fixed = [], []
    for i, kind in enumerate(ORDER[: 2 * args.rounds]):  # ABBA: a drift of the machine's load cancels out
        plan = plan_copy(args.plan, work / f"{kind}-{i}.yaml", cache, work / f"{kind}-{i}", methods)
        if kind == "hand":
            steps = expand(load_plan(plan, command_flags()))
            runs = [cxr(*command_line(step, "resume"), log=work / f"{kind}-{i}.log") for step in steps]
            wall, cpu = sum(w for w, _ in runs), sum(c for _, c in runs)
        else:
            wall, cpu = cxr("benchmark", "run", str(plan), log=work / f"{kind}-{i}.log")
            commands = sum(s.seconds or 0.0 for s in all_states(work / f"{kind}-{i}").values())
            own.append(wall - commands)
            fixed.append(cxr("benchmark", "run", str(plan))[0])
        walls[kind].append(wall)
        cpus[kind].append(cpu)
        print(f"round {i + 1}: {kind:<6} wall {wall:7.1f} s  CPU {cpu:7.1f} s", flush=True)
    hand_wall, bench_wall = sum(walls["hand"]), sum(walls["runner"])
    hand_cpu, bench_cpu = sum(cpus["hand"]), sum(cpus["runner"])
    names = ", ".join(m.name for m in load_plan(plan).methods)
    print(
        f"plan {args.plan.name}: {len(expand(load_plan(plan)))} steps ({names}); load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"difference, runner - by hand (ABBA sums): wall {100 * (bench_wall - hand_wall) / hand_wall:+.2f} %, "
        f"CPU {100 * (bench_cpu - hand_cpu) / hand_cpu:+.2f} % (goal < 2 %)"
    )
    print(
        f"runner's own wall time (its wall - its commands' wall): {', '.join(f'{o:.2f}' for o in own)} s = "
        f"{100 * sum(own) / bench_wall:.2f} % of its wall"
    )
    print(f"rerun with every step done: {', '.join(f'{f:.2f}' for f in fixed)} s (planning and state checks only)")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
