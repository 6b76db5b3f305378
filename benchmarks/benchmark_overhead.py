"""Overhead of ``cxr benchmark run`` over running the same ``cxr`` command lines by hand, side by side.

    .venv/bin/python benchmarks/benchmark_overhead.py [--plan examples/benchmark/phantoms.yaml]
        [--methods pixels,linear-probe] [--work DIR]

The phantom dataset of the plan's header is built once (``cxr download synthetic`` + ``cxr preprocess``, 400
patients, 32 px). The plan is copied twice with its ``cache`` pointed there and its ``output`` into two fresh
folders (``--methods`` keeps a subset of its methods). Then, one after the other on the same machine: (1) *by
hand*: every step's command line, exactly as the benchmark would run it (:func:`cxr_tools.benchmark.steps.expand`,
``--resume`` included), as a plain ``cxr`` subprocess in dependency order; (2) ``cxr benchmark run`` on the other
copy. Printed: wall and CPU time (of the whole process tree) of both and their difference (the goal is < 2 %); the
runner's own wall time, i.e. its wall time minus the wall time of the commands it ran (each step's state records
it), which does not depend on how long the commands happened to take on a busy machine; and the fixed cost of a
rerun with every step done (planning and state checks, no command run).
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
    stamp = time.strftime("%H%M%S")
    by_hand = plan_copy(args.plan, work / f"hand-{stamp}.yaml", cache, work / f"hand-{stamp}", methods)
    runner = plan_copy(args.plan, work / f"runner-{stamp}.yaml", cache, work / f"runner-{stamp}", methods)

    steps = expand(load_plan(by_hand, command_flags()))
    log = work / f"hand-{stamp}.log"
    hand = [cxr(*command_line(step, "resume"), log=log) for step in steps]
    hand_wall, hand_cpu = sum(w for w, _ in hand), sum(c for _, c in hand)
    bench_wall, bench_cpu = cxr("benchmark", "run", str(runner), log=work / f"runner-{stamp}.log")
    fixed_wall, _ = cxr("benchmark", "run", str(runner))
    states = all_states(work / f"runner-{stamp}")
    commands = sum(s.seconds or 0.0 for s in states.values())
    own = bench_wall - commands
    names = ", ".join(m.name for m in load_plan(runner).methods)
    print(f"plan {args.plan.name}: {len(steps)} steps ({names}); load average {os.getloadavg()[0]:.1f}")
    print(f"by hand:           wall {hand_wall:8.1f} s   CPU {hand_cpu:8.1f} s")
    print(
        f"cxr benchmark run: wall {bench_wall:8.1f} s   CPU {bench_cpu:8.1f} s   (its commands: wall {commands:.1f} s)"
    )
    print(
        f"difference:        wall {100 * (bench_wall - hand_wall) / hand_wall:+7.2f} %   "
        f"CPU {100 * (bench_cpu - hand_cpu) / hand_cpu:+7.2f} %   (goal < 2 %)"
    )
    print(f"runner's own wall time (wall - its commands): {own:.2f} s = {100 * own / bench_wall:.2f} % of its wall")
    print(f"rerun with every step done: {fixed_wall:.2f} s (planning and state checks only)")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
