"""``cxr stats`` on the full NIH size: this checkout against an earlier revision, side by side, same cache.

    .venv/bin/python benchmarks/stats_scale.py [--cache /tmp/scale-full/cache] [--baseline REV] [--repeats 3]

The cache is the 112,120-row one ``benchmarks/scale.py --work DIR`` leaves in ``DIR/cache``; it is only read
(every output goes to a temp dir). ``--baseline REV`` (a git revision) is extracted with ``git archive`` and run
from its own ``cxr_tools`` copy; without it only this checkout is measured. Alternating between the versions,
``--repeats`` times, each in a fresh process:

1. the CLI, ``python -m cxr_tools stats CACHE --out TMP`` (plots on) and with ``--no-plots``: wall time and
   CPU time (user + system: what a loaded machine divides among its jobs);
2. its parts, CPU seconds each (less swayed by the load than wall time), in the engine's order: importing
   pandas, reading the manifest and ``index.csv`` (:func:`~cxr_tools.data.caches.format.read_tables`),
   :func:`~cxr_tools.data.caches.label_stats.compute_stats`, importing matplotlib's Agg canvas, and each plot.

Printed: the median and, in brackets, the minimum (the least disturbed run) of each figure per version, the
load average around the run (a loaded machine stretches every figure; the ratios carry over), and whether
both versions wrote the same ``stats.json`` numbers (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/tmp/scale-full/cache")

#: run in a fresh process with the version's root first on sys.path; prints the timings as JSON
PARTS = """
import json, sys, time
from pathlib import Path
cache, out = Path(sys.argv[1]), Path(sys.argv[2])
times = {}
def lap(key, start):
    now = time.process_time()
    times[key] = round(now - start, 3)
    return now
t = time.process_time()
import pandas
import cxr_tools
times["package"] = cxr_tools.__file__
t = lap("import_pandas_cpu_s", t)
from cxr_tools.data.caches.format import read_tables
manifest, index = read_tables(cache)
t = lap("read_index_cpu_s", t)
from cxr_tools.data.caches.label_stats import compute_stats
labels = [str(x) for x in manifest["labels"]]
numbers = compute_stats(index, labels)
t = lap("compute_stats_cpu_s", t)
from cxr_tools.eval import plots
plots.new_figure(1, 1)
t = lap("import_matplotlib_cpu_s", t)
stats = numbers["labels"]
plots.plot_label_counts(out / "label_counts.png", labels, [s.images for s in stats], [s.patients for s in stats])
t = lap("plot_label_counts_cpu_s", t)
plots.plot_cooccurrence(out / "cooccurrence.png", labels, numbers["cooccurrence"])
t = lap("plot_cooccurrence_cpu_s", t)
print(json.dumps(times))
"""


def extract(rev: str, dest: Path) -> Path:
    """``cxr_tools`` of git revision ``rev`` under ``dest`` (a root to put on PYTHONPATH)."""
    archive = dest / "baseline.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cxr_tools"], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "baseline", filter="data")
    return dest / "baseline"


def run(root: Path, args: list[str]) -> tuple[float, float, str]:
    """Wall time, CPU time (user + system) and stdout of ``python ARGS`` in a fresh process importing
    ``cxr_tools`` from ``root`` (also its working directory: ``-m`` and ``-c`` put it first on sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=root, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.stdout


def numbers(path: Path) -> dict[str, object]:
    """The statistics in a ``stats.json``, less where it was written (``out``, ``plots``)."""
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in ("out", "plots")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--baseline", default=None, help="git revision to compare against (e.g. a commit of main)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cxr-stats-bench-") as name:
        tmp = Path(name)
        versions = {"current": ROOT}
        if args.baseline:
            versions = {f"baseline {args.baseline}": extract(args.baseline, tmp), **versions}
        samples: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            for version, root in versions.items():
                out = tmp / f"out-{len(samples[version].get('cli_s', []))}-{version.split()[0]}"
                out.mkdir()
                wall, cpu, _ = run(root, ["-m", "cxr_tools", "stats", str(args.cache), "--out", str(out)])
                times = {"cli_s": wall, "cli_cpu_s": cpu}
                wall, cpu, _ = run(
                    root, ["-m", "cxr_tools", "stats", str(args.cache), "--out", str(out / "np"), "--no-plots"]
                )
                times.update(cli_no_plots_s=wall, cli_no_plots_cpu_s=cpu)
                _, _, text = run(root, ["-c", PARTS, str(args.cache), str(out / "parts")])
                parts = json.loads(text)
                if not Path(parts.pop("package")).is_relative_to(root):  # the version meant, not an installed one
                    raise SystemExit(f"{version}: imported cxr_tools from outside {root}")
                times.update(parts)
                for key, value in times.items():
                    samples[version].setdefault(key, []).append(value)
        written = [numbers(next(tmp.glob(f"out-0-{v.split()[0]}")) / "stats.json") for v in versions]
        result = {
            "cache": str(args.cache),
            "repeats": args.repeats,
            "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "identical_stats_json": all(w == written[0] for w in written),
            "median": {v: {k: round(statistics.median(x), 2) for k, x in s.items()} for v, s in samples.items()},
            "min": {v: {k: round(min(x), 2) for k, x in s.items()} for v, s in samples.items()},
        }
    keys = list(samples["current"])
    print(f"{'median (min)':28}" + "".join(f"{v[:24]:>26}" for v in versions))
    for key in keys:
        cells = [f"{statistics.median(samples[v][key]):.2f} ({min(samples[v][key]):.2f})" for v in versions]
        print(f"{key:28}" + "".join(f"{c:>26}" for c in cells))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["identical_stats_json"] else 1


if __name__ == "__main__":
    sys.exit(main())
