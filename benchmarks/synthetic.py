"""Benchmark of the synthetic phantom generator: images per second at 256 px (goal: >= 200 per core).

Run: ``.venv/bin/python benchmarks/synthetic.py [--patients 150] [--size 256] [--workers 0 2]``.
Measures ``generate`` end to end (planning, rendering, encoding, writing files, metadata) into a temporary
directory, once per worker setting, with OpenCV limited to one thread so "1 process" means one core. Besides
wall-clock images/s it reports images per CPU-second (this process plus its reaped workers), which is the
per-core rate even on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

GOAL_PER_CORE = 200.0


def measure(patients: int, size: int, workers: int, fmt: str = "png", layout: str = "nih") -> dict[str, float]:
    """Generate once and return images, seconds and images/s."""
    import cv2

    from cxr_tools.data.synthetic import SyntheticConfig, generate

    cv2.setNumThreads(1)
    cpu0 = _cpu()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SyntheticConfig(
            dest=Path(tmp) / "ds", patients=patients, size=size, workers=workers, format=fmt, layout=layout
        )
        result = generate(cfg)
    cpu = _cpu() - cpu0
    return {
        "images": result.n_images,
        "seconds": result.seconds,
        "images_per_s": result.n_images / result.seconds,
        "cpu_seconds": cpu,
        "images_per_cpu_s": result.n_images / cpu,
    }


def _cpu() -> float:
    """CPU seconds of this process and of its finished child processes (the worker pool)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--format", default="png")
    parser.add_argument("--layout", default="nih")
    args = parser.parse_args(argv)
    measure(10, args.size, 0)  # warm-up: imports, page cache
    print(
        f"synthetic phantom, {args.size} px, {args.patients} patients, {args.layout}/{args.format}, "
        f"{os.cpu_count()} CPUs visible"
    )
    print(f"{'workers':>8} {'images':>7} {'wall s':>7} {'images/s':>9} {'CPU s':>7} {'img/CPU-s':>10} {'vs goal':>8}")
    for w in args.workers:
        r = measure(args.patients, args.size, w, args.format, args.layout)
        print(
            f"{w:>8} {r['images']:>7.0f} {r['seconds']:>7.2f} {r['images_per_s']:>9.1f} {r['cpu_seconds']:>7.2f} "
            f"{r['images_per_cpu_s']:>10.1f} {r['images_per_cpu_s'] / GOAL_PER_CORE:>7.2f}x"
        )
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
