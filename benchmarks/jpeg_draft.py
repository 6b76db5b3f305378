"""Benchmark of ``cxr preprocess --jpeg-draft``: images/s with and without it on CheXpert-sized JPEGs, and how far
the cached pixels move.

    .venv/bin/python benchmarks/jpeg_draft.py [--images 120] [--size 320] [--workers N] [--repeats 3]

CheXpert ships JPEGs of about 2320 × 2828 px. The built-in phantoms (1024², generated once into ``--data``) are
upscaled to that size and written as quality-90 JPEGs in class folders (the ``folder`` source). Then, alternating,
``--repeats`` times: the whole :func:`cxr_tools.engine.preprocess.preprocess` call (decode, crop, resize, CLAHE,
HDF5) with the full decode and with ``jpeg_draft``. Printed: median images/s of each, their ratio, and the
difference between the two caches (mean and 99th percentile of |draft − full| in gray levels, same rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cxr_tools.data.decoding.pipeline import available_cores

SHAPE = (2828, 2320)  # rows, columns of a typical CheXpert frontal view


def jpeg_folder(data: Path, n: int) -> Path:
    """``n`` CheXpert-sized JPEGs in two class folders (made once and kept in ``data``)."""
    import cv2

    from cxr_tools.data.synthetic import SyntheticConfig, generate

    dest = data / f"jpeg-{SHAPE[0]}x{SHAPE[1]}-{n}"
    if dest.is_dir() and len(list(dest.rglob("*.jpg"))) == n:
        return dest
    src = data / "synthetic-1024-jpeg-src"
    generate(SyntheticConfig(dest=src, patients=max(1, n // 2), size=1024, seed=0, overwrite=True))
    pngs = sorted(src.rglob("*.png"))[:n]
    if len(pngs) < n:
        sys.exit(f"only {len(pngs)} phantoms generated, {n} needed")
    for i, png in enumerate(pngs):
        img = cv2.resize(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), SHAPE[::-1], interpolation=cv2.INTER_CUBIC)
        out = dest / ("a" if i % 2 else "b") / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return dest


def run(src: Path, out: Path, size: int, workers: int, draft: bool) -> float:
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    started = time.perf_counter()
    preprocess(PreprocessConfig(src=src, output=out, size=size, workers=workers, overwrite=True, jpeg_draft=draft))
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    args = ap.parse_args()

    from cxr_tools.data.caches.format import open_cache

    src = jpeg_folder(args.data, args.images)
    mean_kb = statistics.mean(p.stat().st_size for p in src.rglob("*.jpg")) / 1024
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-jpeg-"))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for draft in (False, True) if r % 2 == 0 else (True, False):
            seconds[draft].append(run(src, work / f"cache-{int(draft)}", args.size, args.workers, draft))
    full = open_cache(work / "cache-0").read(np.arange(args.images))
    fast = open_cache(work / "cache-1").read(np.arange(args.images))
    diff = np.abs(full.astype(np.int16) - fast.astype(np.int16))
    rate = {d: args.images / statistics.median(s) for d, s in seconds.items()}
    print(
        f"{args.images} JPEGs {SHAPE[1]}x{SHAPE[0]} (mean {mean_kb:.0f} KB) -> {args.size} px, {args.workers} workers, "
        f"median of {args.repeats}:"
    )
    print(f"  full decode   {rate[False]:7.1f} images/s  (runs: {', '.join(f'{s:.2f}' for s in seconds[False])} s)")
    print(f"  --jpeg-draft  {rate[True]:7.1f} images/s  (runs: {', '.join(f'{s:.2f}' for s in seconds[True])} s)")
    print(f"  speed-up {rate[True] / rate[False]:.2f}x; |draft - full| mean {diff.mean():.2f}, "
          f"99th percentile {np.percentile(diff, 99):.0f}, max {diff.max()} gray levels (CLAHE on)")  # fmt: skip


if __name__ == "__main__":
    main()
