"""The full NIH size: every stage of the pipeline on a synthetic NIH of 112,120 images and 30,805 patients.

    .venv/bin/python benchmarks/scale.py [--images 112120] [--work DIR] [--size 32] [--workers 2] [--json out.json]

The point is the row count, not the pixels: the images are hard links to a pool of 64 small phantom PNGs
(``--pool-side`` px), so decoding is cheap and what is measured is what grows with the dataset. The metadata
follows NIH ChestX-ray14's published statistics: 30,805 patients (scaled with ``--images``), a heavy-tailed
number of follow-up images per patient, 53.8 % "No Finding", the 14 findings at their NIH frequencies
(Infiltration 17.7 % ... Hernia 0.2 %), 1.57 findings per abnormal image, 60 % PA / 40 % AP.

Measured, each stage as the project's own engine runs it:

1. ``preprocess``: wall time per 1,000 images, and the peak RSS of the writer, of the largest worker and the
   peak PSS of the whole process tree (sampled from /proc every 20 ms), on a tenth of the images and on all
   of them (flat = the same peak for both);
2. opening the cache and its index, ``cxr stats`` (engine and the CLI in a fresh process), the meta-split
   pools (:func:`~cxr_tools.data.sampling.meta_samplers.meta_samplers`, with the leak checks and sampler set-up);
3. episode sampling rate from the meta-train pool, and meta-train's per-step time outside the model
   (sampling + cache reads + tensor conversion) against a whole meta-gradient step (conv4, 2-way 5-shot,
   10 queries, 5 inner steps, meta-batch 4: the CLI defaults; one torch thread);
4. ``evaluate`` over 600 episodes (method ``pixels``: no network, so its wall time is the time outside any
   model) with the episode list, metrics and patient bootstrap, one torch thread, in a fresh process: wall
   time, peak RSS;
5. ``predict`` over 10,000 files and over 2,000 (a conv4-tiny model, rows streamed to the CSV): peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from cxr_tools.data.labels import NIH_CSV_HEADER  # noqa: E402

NIH_IMAGES, NIH_PATIENTS = 112_120, 30_805
#: NIH ChestX-ray14 (Data_Entry_2017): images positive for each finding, of 112,120
NIH_COUNTS = {
    "Infiltration": 19_894,
    "Effusion": 13_317,
    "Atelectasis": 11_559,
    "Nodule": 6_331,
    "Mass": 5_782,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Pleural_Thickening": 3_385,
    "Cardiomegaly": 2_776,
    "Emphysema": 2_516,
    "Edema": 2_303,
    "Fibrosis": 1_686,
    "Pneumonia": 1_431,
    "Hernia": 227,
}
NO_FINDING = 60_361
POOL = 64


# --- the synthetic NIH ------------------------------------------------------------------------------------------


def images_per_patient(rng: np.random.Generator, images: int, patients: int) -> np.ndarray:
    """A heavy-tailed count per patient (most have one or two images, a few have dozens) summing to ``images``."""
    weights = rng.pareto(1.2, patients) + 0.05
    counts = 1 + np.floor(weights / weights.sum() * (images - patients)).astype(np.int64)
    short = images - int(counts.sum())
    counts[rng.choice(patients, short, replace=False)] += 1
    return counts


def findings(rng: np.random.Generator, n: int) -> list[str]:
    """``Finding Labels`` cells with NIH's No Finding share and per-finding frequencies (each within 15 %: the
    findings of an image are drawn without replacement, which flattens the commonest a little)."""
    names = list(NIH_COUNTS)
    freq = np.array([NIH_COUNTS[k] for k in names], dtype=np.float64)
    abnormal = rng.random(n) >= NO_FINDING / NIH_IMAGES
    per_image = freq.sum() / (NIH_IMAGES - NO_FINDING)  # 1.57 findings per abnormal image
    k = np.minimum(1 + rng.poisson(per_image - 1, n), len(names))
    out = []
    for i in range(n):
        if not abnormal[i]:
            out.append("No Finding")
            continue
        picked = rng.choice(len(names), k[i], replace=False, p=freq / freq.sum())
        out.append("|".join(names[j] for j in sorted(picked)))
    return out


def make_dataset(root: Path, images: int, patients: int, pool_side: int, seed: int = 0) -> Path:
    """An NIH-layout dataset: ``Data_Entry_2017_v2020.csv`` and ``images/`` of hard links to a small PNG pool."""
    import cv2

    csv = root / "Data_Entry_2017_v2020.csv"
    if csv.is_file() and len(csv.read_text().splitlines()) - 1 == images:
        return root
    rng = np.random.default_rng(seed)
    (root / "pool").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    xx = np.mgrid[0:pool_side, 0:pool_side][1].astype(np.float32)
    pool = []
    for i in range(POOL):
        img = 60 + 90 * np.exp(-(((xx - pool_side * rng.uniform(0.3, 0.7)) / (0.3 * pool_side)) ** 2))
        img += rng.normal(0, 6, img.shape)
        path = root / "pool" / f"{i:03d}.png"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
        pool.append(path)
    counts = images_per_patient(rng, images, patients)
    cells = findings(rng, images)
    lines = [NIH_CSV_HEADER]
    n = 0
    for p, count in enumerate(counts, start=1):
        age, sex = int(rng.integers(1, 95)), "MF"[int(rng.integers(0, 2))]
        for k in range(count):
            name = f"{p:08d}_{k:03d}.png"
            target = root / "images" / name
            if not target.exists():
                os.link(pool[n % POOL], target)
            view = "PA" if rng.random() < 0.6 else "AP"
            lines.append(f"{name},{cells[n]},{k},{p},{age},{sex},{view},2500,2048,0.143,0.143")
            n += 1
    csv.write_text("\n".join(lines) + "\n")
    return root


def subset(base: Path, dest: Path, n: int) -> Path:
    """The first ``n`` rows of ``base`` (whole patients are not needed for a memory figure)."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    lines = (base / "Data_Entry_2017_v2020.csv").read_text().splitlines()[: n + 1]
    for line in lines[1:]:
        name = line.split(",", 1)[0]
        if not (dest / "images" / name).exists():
            os.link(base / "images" / name, dest / "images" / name)
    (dest / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return dest


# --- measuring a process tree -----------------------------------------------------------------------------------


def measured(code: str) -> tuple[str, dict[str, float]]:
    """Run ``code`` in a fresh interpreter; its stdout, wall time and the peak memory of its process tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    stdout, peak = communicate_sampled(proc)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"the measured process failed ({proc.returncode}): {code}")
    peak["seconds"] = time.perf_counter() - start
    return stdout, {k: round(v, 1) for k, v in peak.items()}


def preprocess_stage(src: Path, out: Path, size: int, workers: int) -> dict[str, float]:
    code = (
        "from pathlib import Path; from cxr_tools.engine.preprocess import PreprocessConfig, preprocess; "
        f"r = preprocess(PreprocessConfig(src=Path({str(src)!r}), output=Path({str(out)!r}), size={size}, "
        f"workers={workers}, overwrite=True)); print(r.images, r.rejected, r.seconds)"
    )
    stdout, peak = measured(code)
    images, rejected, seconds = stdout.split()[-3:]
    assert int(rejected) == 0, f"{rejected} inputs rejected"
    return {
        "images": int(images),
        "engine_seconds": round(float(seconds), 1),
        "seconds_per_1000": round(float(seconds) / int(images) * 1000, 2),
        **peak,
    }


# --- in-process stages ------------------------------------------------------------------------------------------


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def index_stages(cache_dir: Path, shots: int, queries: int) -> dict[str, float]:
    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.data.sampling.episodes import EpisodeSpec
    from cxr_tools.data.sampling.meta_samplers import meta_samplers
    from cxr_tools.engine.stats import StatsConfig, run_stats

    out: dict[str, float] = {}
    cache, out["open_cache_s"] = timed(open_cache, cache_dir)
    index, out["read_index_s"] = timed(lambda: cache.index)
    out["index_rows"] = len(index)
    _, out["stats_engine_s"] = timed(run_stats, StatsConfig(cache_dir, cache_dir / "stats-bench", plots=True))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cxr_tools", "stats", str(cache_dir), "--out", str(cache_dir / "stats-cli")],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out["stats_cli_s"] = time.perf_counter() - start
    spec = EpisodeSpec(ways=2, shots=shots, queries=queries)
    (_, train, _, pools), out["meta_pools_s"] = timed(meta_samplers, cache, None, 0, spec, validation=True)
    out.update({f"pool_{k}_rows": len(v) for k, v in pools.items()})
    rng = np.random.default_rng(0)
    for _ in range(20):  # warm
        train.sample(rng, shuffle=True)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        train.sample(rng, shuffle=True)
    out["episodes_per_s"] = n / (time.perf_counter() - start)
    out.update(meta_step_overhead(cache, train))
    cache.close()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def meta_step_overhead(cache, sampler, steps: int = 6, meta_batch: int = 4) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Per meta-step: sampling + reads + tensors (outside the model) against a whole meta-gradient step."""
    import torch

    from cxr_tools.methods.episodes import episode_tensors, meta_gradient
    from cxr_tools.methods.maml.config import MamlConfig
    from cxr_tools.models import create_model
    from cxr_tools.runtime.seeding import numpy_generator

    torch.set_num_threads(1)  # 2 shared cores: more threads only contend (the figure is a ratio)
    torch.manual_seed(0)
    model = create_model("conv4", num_classes=2)
    maml, device = MamlConfig(), torch.device("cpu")
    norm = str(getattr(model, "normalisation", "unit"))
    keys = [[(0, 1, s, t) for t in range(meta_batch)] for s in range(steps + 2)]
    meta_gradient(model, sampler, cache, keys[0], maml, device)  # warm
    start = time.perf_counter()
    for step_keys in keys[2:]:
        model.zero_grad()
        meta_gradient(model, sampler, cache, step_keys, maml, device)
    step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for step_keys in keys[2:]:
        for key in step_keys:
            episode_tensors(cache, sampler.sample(numpy_generator(*key), shuffle=True), norm, device)
    data = (time.perf_counter() - start) / steps
    return {"meta_step_s": step, "meta_step_data_s": data, "meta_step_overhead_pct": 100 * data / step}


def evaluate_stage(cache_dir: Path, out: Path, shots: int, queries: int) -> dict[str, float]:
    code = (
        "from pathlib import Path; from cxr_tools.engine.evaluate import EvaluateConfig, evaluate; "
        f"r = evaluate(EvaluateConfig(data=Path({str(cache_dir)!r}), output=Path({str(out)!r}), method='pixels', "
        f"episodes=600, shots={shots}, queries={queries}, plots=False, device='cpu', threads=1, overwrite=True)); "
        "print('done')"
    )
    _, peak = measured(code)
    return peak


def predict_stage(work: Path, src: Path, n: int, model_dir: Path) -> dict[str, float]:
    listing = work / f"predict-{n}.txt"
    names = sorted(os.listdir(src / "images"))[:n]
    listing.write_text("\n".join(str(src / "images" / name) for name in names) + "\n")
    code = (
        "from pathlib import Path; from cxr_tools.engine.predict import PredictConfig, run_predict; "
        f"r = run_predict(PredictConfig(input=Path({str(listing)!r}), output=Path({str(work / f'pred-{n}.csv')!r}), "
        f"model=Path({str(model_dir)!r}), device='cpu', overwrite=True)); print(r.n_ok)"
    )
    stdout, peak = measured(code)
    assert int(stdout.split()[-1]) == n
    return {"files": n, "per_1000_s": round(peak["seconds"] / n * 1000, 2), **peak}


def model_folder(path: Path, size: int) -> Path:
    import torch

    from cxr_tools.data.decoding.imaging import ImageOps
    from cxr_tools.data.labels import NIH_LABELS
    from cxr_tools.models import create_model, save_model_dir

    torch.manual_seed(0)
    model = create_model("conv4-tiny", num_classes=len(NIH_LABELS))
    meta = {
        "labels": list(NIH_LABELS),
        "training": "supervised",
        "image_size": size,
        "preprocessing": ImageOps(size=size).to_dict(),
        "extra": {},
    }
    save_model_dir(model, meta, path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=NIH_IMAGES)
    ap.add_argument("--work", type=Path, default=None, help="keep the dataset and caches here (default: a temp dir)")
    ap.add_argument("--size", type=int, default=32, help="cache image side")
    ap.add_argument("--pool-side", type=int, default=64, help="side of the pool PNGs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--predict-files", type=int, default=10_000)
    ap.add_argument("--shots", type=int, default=5, help="episode shots (lower for a quick run on few images)")
    ap.add_argument("--queries", type=int, default=10, help="episode queries per class")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    patients = max(1, round(NIH_PATIENTS * args.images / NIH_IMAGES))
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="cxr-scale-")
        args.work = Path(tmp.name)
    work = args.work
    results: dict[str, object] = {
        "images": args.images,
        "patients": patients,
        "size": args.size,
        "workers": args.workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }

    def report(key: str, value: object) -> None:
        results[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)

    (src, seconds) = timed(make_dataset, work / "nih", args.images, patients, args.pool_side)
    report("dataset_seconds", round(seconds, 1))
    tenth = subset(src, work / "nih-tenth", max(1, args.images // 10))
    report("preprocess_tenth", preprocess_stage(tenth, work / "cache-tenth", args.size, args.workers))
    report("preprocess_full", preprocess_stage(src, work / "cache", args.size, args.workers))
    report("index", index_stages(work / "cache", args.shots, args.queries))
    report("evaluate_600", evaluate_stage(work / "cache", work / "eval", args.shots, args.queries))
    model = model_folder(work / "model", args.size)
    small = max(1, args.predict_files // 5)
    report(f"predict_{small}", predict_stage(work, src, min(small, args.images), model))
    report(f"predict_{args.predict_files}", predict_stage(work, src, min(args.predict_files, args.images), model))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
