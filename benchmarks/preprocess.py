"""Benchmark of ``cxr preprocess``: throughput against the decode-only limit, flat memory, cache read speed.

    .venv/bin/python benchmarks/preprocess.py [--images 300] [--workers N] [--sizes 200,800] [--docs docs/benchmarks.md]

1. **Throughput.** A few hundred synthetic 1024² PNGs (the built-in generator at ``--size 1024``, kept in
   ``--data`` between runs). The decode-only limit is a bare grey ``cv2.imread`` loop over the same files on the
   same number of processes, through the same ordered process pool, discarding the pixels; Wuffs and libspng
   decode-only loops (``pywuffs`` / ``pyspng``, what preprocess decodes PNGs with) run beside it. The preprocess
   engine (decode →
   crop/resize to 256 → CLAHE → write HDF5, index, manifest) runs on the same files. Runs alternate, the
   median of ``--repeats`` is kept; the goal is engine / grey ``cv2.imread`` ≥ 1.1.
2. **Memory.** The engine on two dataset sizes (rows; larger sets reuse the PNGs through symlinks under new
   names) in a fresh process, sampling ``/proc`` every 20 ms: peak RSS of the writer process, of the largest
   worker, and the peak proportional set size (PSS) of the whole process tree. Flat = the same for both sizes.
3. **Random reads** of single images (and batches of 64) from an HDF5 and a memmap cache, page cache warm.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # proctree, also when loaded as a module by tests

from proctree import communicate_sampled  # noqa: E402

from cxr_tools.data.decoding.pipeline import available_cores, decode_only, ordered_map  # noqa: E402

CHUNK = 32


def base_dataset(data: Path, n: int) -> Path:
    """Synthetic NIH-layout 1024² PNGs with at least ``n`` images, generated once and kept in ``data``."""
    from cxr_tools.data.synthetic import SyntheticConfig, generate

    dest = data / "synthetic-1024"
    csv = dest / "Data_Entry_2017_v2020.csv"
    if csv.is_file() and _rows(csv) >= n:
        return dest
    patients = math.ceil(n / 3)
    while True:
        print(f"generating {patients} synthetic patients at 1024² in {dest} ...", file=sys.stderr)
        generate(SyntheticConfig(dest=dest, patients=patients, size=1024, workers=available_cores(), overwrite=True))
        if _rows(csv) >= n:
            return dest
        patients = math.ceil(patients * 1.3)


def _rows(csv: Path) -> int:
    with open(csv) as fh:
        return sum(1 for _ in fh) - 1


def subset(base: Path, n: int, dest: Path) -> Path:
    """An NIH-layout dataset of exactly ``n`` rows over ``base``'s PNGs (symlinks; replicas get new names)."""
    import pandas as pd

    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    df = pd.read_csv(base / "Data_Entry_2017_v2020.csv", dtype=str, keep_default_na=False)
    rows = []
    for i in range(n):
        rec = df.iloc[i % len(df)].copy()
        k = i // len(df)
        name = rec["Image Index"]
        if k:
            name = f"{Path(name).stem}_r{k}.png"
            rec["Patient ID"] = str(int(rec["Patient ID"]) + 100000 * k)
            rec["Image Index"] = name
        os.symlink(base / "images" / df.iloc[i % len(df)]["Image Index"], dest / "images" / name)
        rows.append(rec)
    pd.DataFrame(rows).to_csv(dest / "Data_Entry_2017_v2020.csv", index=False)
    return dest


def time_decode_only(paths: list[str], workers: int, decoder: str = "opencv") -> float:
    t = time.perf_counter()
    chunks = (paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK))
    n = sum(ordered_map(functools.partial(decode_only, decoder=decoder), chunks, workers))
    elapsed = time.perf_counter() - t
    assert n == len(paths), f"{decoder} decoded {n} of {len(paths)} (wuffs needs the fast-png extra, pywuffs)"
    return elapsed


def time_engine(src: Path, out: Path, workers: int, storage: str = "hdf5") -> float:
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    t = time.perf_counter()
    r = preprocess(PreprocessConfig(src=src, output=out, size=256, workers=workers, format=storage, overwrite=True))
    elapsed = time.perf_counter() - t
    assert r.rejected == 0 and r.images > 0
    return elapsed


# --- CPU per image ----------------------------------------------------------------------------------------------

_CPU_CODE = """
import sys, cv2
cv2.setNumThreads(1)
from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.data.decoding.pipeline import ChunkTask, decode_only, keep_freed_memory, process_chunk
paths, method = tuple(sys.argv[2:]), sys.argv[1]
if method == "imread":
    decode_only(paths)
elif method == "imread_kept":  # the bare loop with the worker's malloc setting (for comparison)
    keep_freed_memory()
    decode_only(paths)
elif method in ("wuffs", "spng"):
    decode_only(paths, decoder=method)
elif method == "worker":
    keep_freed_memory()  # what process_chunk does in a worker process (this one has no parent)
    process_chunk(ChunkTask(0, paths, ImageOps()))
"""
CPU_METHODS = ("imread", "imread_kept", "wuffs", "spng", "worker")


def cpu_per_image(paths: list[str], rounds: int) -> dict[str, float]:
    """CPU ms per image of each method in a fresh one-process interpreter (what a worker does), less the same
    interpreter's start and imports; rounds alternate, the median is kept. CPU time, unlike wall time, barely
    moves with what else runs on a shared machine."""

    def cpu(method: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", _CPU_CODE, method, *paths], check=True, cwd=ROOT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    samples: dict[str, list[float]] = {m: [] for m in CPU_METHODS}
    for _ in range(rounds):
        base = cpu("none")
        for m in CPU_METHODS:
            samples[m].append((cpu(m) - base) / len(paths) * 1000)
    return {m: round(statistics.median(v), 2) for m, v in samples.items()}


# --- memory ---------------------------------------------------------------------------------------------------


def measure_memory(src: Path, out: Path, workers: int) -> dict[str, float]:
    """Run the engine in a fresh process and sample the RSS/PSS of its process tree."""
    code = (
        "import sys,resource; from pathlib import Path; "
        "from cxr_tools.engine.preprocess import PreprocessConfig, preprocess; "
        f"r = preprocess(PreprocessConfig(src=Path({str(src)!r}), output=Path({str(out)!r}), size=256, "
        f"workers={workers}, overwrite=True)); "
        "print(r.images, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    stdout, sampled = communicate_sampled(proc)
    peak = {"writer_rss_mb": sampled.pop("main_rss_mb"), **sampled}
    images, maxrss_kb = stdout.split()
    peak["writer_maxrss_mb"] = int(maxrss_kb) / 1024  # getrusage(RUSAGE_SELF) of the writer, for comparison
    peak["images"] = int(images)
    return {k: round(v, 1) for k, v in peak.items()}


# --- reads ----------------------------------------------------------------------------------------------------


def read_speed(cache: Path, n: int = 4000, batch: int = 64) -> dict[str, float]:
    from cxr_tools.data.caches.format import open_cache

    rng = np.random.default_rng(0)
    with open_cache(cache) as c:
        rows = rng.integers(0, len(c), n)
        c.read(np.arange(len(c)))  # warm
        t = time.perf_counter()
        for r in rows:
            c[int(r)]
        single = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, n, batch):
            c.read(rows[i : i + batch])
        batched = n / (time.perf_counter() - t)
    return {"single_images_per_s": round(single), "batch64_images_per_s": round(batched)}


# --- report ---------------------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    t, c = res["throughput"], res["cpu_ms_per_image"]
    lines = [
        "## Preprocess",
        "",
        f"`benchmarks/preprocess.py` on {res['machine']}; {t['images']} synthetic 1024² PNGs "
        f"(mean {t['mean_file_kb']:.0f} KB), {t['workers']} worker processes, output 256² uint8 HDF5, CLAHE on, "
        f"page cache warm, median of {t['repeats']} alternating runs; load average "
        f"{res['load_average'][0]:.1f} before, {res['load_average'][1]:.1f} after (other jobs on the machine).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| decode-only limit (grey `cv2.imread`, same files, same processes) "
        f"| {t['decode_only_images_per_s']:.1f} images/s |",
        f"| Wuffs decode-only (`pywuffs`, same files, same processes) | {t['wuffs_images_per_s']:.1f} images/s |",
        f"| libspng decode-only (`pyspng`, same files, same processes) | {t['spng_images_per_s']:.1f} images/s |",
        f"| `cxr preprocess` engine (decode → crop/resize → CLAHE → HDF5 + index + manifest) "
        f"| {t['engine_images_per_s']:.1f} images/s |",
        f"| **ratio engine / grey `cv2.imread`** (goal ≥ 1.1) | **{t['ratio']:.2f}** "
        f"(back-to-back runs: {', '.join(f'{r:.2f}' for r in t['paired_ratios'])}) |",
        f"| ratio Wuffs / grey `cv2.imread` (decode alone) | {t['wuffs_ratio']:.2f} |",
        f"| ratio libspng / grey `cv2.imread` (decode alone) | {t['spng_ratio']:.2f} |",
        "",
        "The back-to-back ratios (limit, Wuffs, libspng, engine run one after the other) show the spread of a shared "
        "machine.",
        "",
        f"CPU per image in one fresh process (what a worker does; start and imports subtracted; median of "
        f"{t['repeats']} alternating rounds over {res['cpu_images']} of the files): grey `cv2.imread` "
        f"{c['imread']:.2f} ms, Wuffs decode {c['wuffs']:.2f} ms, libspng decode {c['spng']:.2f} ms, the engine's "
        f"worker (decode → crop/resize → CLAHE) {c['worker']:.2f} ms: CPU-bound ratios Wuffs / `cv2.imread` "
        f"{c['imread'] / c['wuffs']:.2f}, libspng / `cv2.imread` {c['imread'] / c['spng']:.2f}, worker / "
        f"`cv2.imread` {c['imread'] / c['worker']:.2f}. The worker keeps freed memory for reuse "
        f"(`keep_freed_memory`); the bare loop given the same malloc setting: {c['imread_kept']:.2f} ms "
        f"(worker / it {c['imread_kept'] / c['worker']:.2f}).",
        "",
        "Peak memory of the engine in a fresh process (256² output, HDF5; larger sets reuse the PNGs through "
        "symlinked copies):",
        "",
        "| rows | writer RSS | largest worker RSS | whole tree PSS |",
        "|---|---|---|---|",
    ]
    for m in res["memory"]:
        lines.append(
            f"| {m['images']} | {m['writer_rss_mb']:.0f} MB | {m['worker_rss_mb']:.0f} MB | {m['tree_pss_mb']:.0f} MB |"
        )
    lines += [
        "",
        f"Random reads from a {res['reads']['rows']}-image 256² cache (one process, page cache warm):",
        "",
        "| format | single image | batches of 64 |",
        "|---|---|---|",
    ]
    for fmt in ("hdf5", "memmap"):
        r = res["reads"][fmt]
        lines.append(f"| {fmt} | {r['single_images_per_s']:,} images/s | {r['batch64_images_per_s']:,} images/s |")
    lines += ["", f"Raw numbers: `{json.dumps(res, sort_keys=True)}`", ""]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    """Replace (or append) the ``## Preprocess`` section of ``path``; other sections are left alone."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Preprocess"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        # up to the next section or sub-section (other benchmarks' sub-sections such as --jpeg-draft stay)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "### "))), len(lines))
        new = "\n".join([*lines[:start], *section.rstrip("\n").splitlines(), "", *lines[end:]]).rstrip("\n") + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="images for the throughput run")
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-images", type=int, default=60, help="images for the CPU-per-image measurement")
    ap.add_argument("--sizes", default="200,800", help="dataset sizes (rows) for the memory measurement")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    ap.add_argument("--docs", type=Path, default=None, help="update the Preprocess section of this Markdown file")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base = base_dataset(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    try:
        src = subset(base, args.images, work / f"src{args.images}")
        paths = sorted(str(p) for p in (src / "images").iterdir())
        sizes_kb = [os.path.getsize(p) / 1024 for p in paths]
        time_decode_only(paths, args.workers)  # warm the page cache and the interpreter
        time_engine(src, work / "c_h5", args.workers)  # and the engine's imports
        dec, wuffs, spng, eng = [], [], [], []
        for _ in range(args.repeats):
            dec.append(time_decode_only(paths, args.workers))
            wuffs.append(time_decode_only(paths, args.workers, decoder="wuffs"))
            spng.append(time_decode_only(paths, args.workers, decoder="spng"))
            eng.append(time_engine(src, work / "c_h5", args.workers))
        d, wu, sp, e = (statistics.median(x) for x in (dec, wuffs, spng, eng))
        throughput = {
            "images": len(paths),
            "mean_file_kb": round(float(np.mean(sizes_kb)), 1),
            "workers": args.workers,
            "repeats": args.repeats,
            "decode_only_s": [round(x, 3) for x in dec],
            "wuffs_s": [round(x, 3) for x in wuffs],
            "spng_s": [round(x, 3) for x in spng],
            "engine_s": [round(x, 3) for x in eng],
            "decode_only_images_per_s": round(len(paths) / d, 1),
            "wuffs_images_per_s": round(len(paths) / wu, 1),
            "spng_images_per_s": round(len(paths) / sp, 1),
            "engine_images_per_s": round(len(paths) / e, 1),
            "ratio": round(d / e, 3),
            "wuffs_ratio": round(d / wu, 3),
            "spng_ratio": round(d / sp, 3),
            "paired_ratios": [round(a / b, 3) for a, b in zip(dec, eng, strict=True)],
        }
        print(json.dumps(throughput), file=sys.stderr)
        cpu = cpu_per_image(paths[: args.cpu_images], args.repeats)
        cpu_images = min(args.cpu_images, len(paths))
        print(json.dumps(cpu), file=sys.stderr)

        memory = []
        for n in sizes:
            s = subset(base, n, work / f"mem{n}")
            memory.append(measure_memory(s, work / f"mem{n}_cache", args.workers))
            shutil.rmtree(s)
            shutil.rmtree(work / f"mem{n}_cache")
            print(json.dumps(memory[-1]), file=sys.stderr)

        time_engine(src, work / "c_mm", args.workers, storage="memmap")
        reads = {"rows": len(paths), "hdf5": read_speed(work / "c_h5"), "memmap": read_speed(work / "c_mm")}
        machine = f"{platform.machine()} Linux, {os.cpu_count()} cores, Python {platform.python_version()}"
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        res = {
            "machine": machine,
            "load_average": load,
            "throughput": throughput,
            "cpu_ms_per_image": cpu,
            "cpu_images": cpu_images,
            "memory": memory,
            "reads": reads,
        }
        section = markdown(res)
        print(section)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        if args.docs:
            update_docs(args.docs, section)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
