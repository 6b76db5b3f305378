"""Benchmark of ``cxr predict``: images/s of the engine on a folder of PNGs ÷ the bare model forward.

    .venv/bin/python benchmarks/predict.py [--images 192] [--batch-size 32] [--workers 0,2]
        [--models conv4@128,resnet18@224] [--repeats 2] [--docs]

For each ``model@size`` a randomly initialised (seeded) model folder is written with that input size and the
default preprocessing (center crop, area resize, CLAHE). Then, alternating, ``--repeats`` times:

* **engine**: :func:`cxr_tools.engine.predict.run_predict` on a CSV list of ``--images`` synthetic 1024² PNGs
  (the built-in generator, kept in ``--data`` between runs and shared with ``benchmarks/preprocess.py``):
  listing, decoding in ``--workers`` processes, preprocessing, batched inference, writing the CSV -- the whole
  call, model loading and pool start included;
* **bare forward**: the same model on in-memory float tensors of the same shape ``[B, 1, size, size]``, the
  same batch size and number of images, ``torch.inference_mode``, eval mode.

The ratio engine / bare (medians) is the figure; the goal is ≥ 0.8. Both use torch's default intra-op threads
(all cores); in the engine the decoding workers share those cores with the forward pass, which is the real
cost of decoding and what the ratio measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torch is imported inside the functions: decoding workers re-import this main module (forkserver), and the
# `cxr` entry point they re-import in real use does not import torch either.
from cxr_tools.data.decoding.pipeline import available_cores  # noqa: E402


def png_files(data: Path, n: int, size: int) -> list[Path]:
    """``n`` synthetic PNGs of side ``size`` (generated once into ``data``; reused by later runs)."""
    from cxr_tools.data.synthetic import SyntheticConfig, generate

    dest = data / f"synthetic-{size}"
    images = sorted((dest / "images").glob("*.png")) if (dest / "images").is_dir() else []
    if len(images) < n:
        patients = math.ceil(n / 2.5)
        print(f"generating {patients} synthetic patients at {size}² in {dest} ...", file=sys.stderr)
        generate(SyntheticConfig(dest=dest, patients=patients, size=size, workers=available_cores(), overwrite=True))
        images = sorted((dest / "images").glob("*.png"))
    if len(images) < n:
        raise SystemExit(f"only {len(images)} images in {dest}; ask for fewer --images")
    return images[:n]


def model_folder(work: Path, arch: str, size: int) -> Path:
    import torch

    from cxr_tools.data.decoding.imaging import ImageOps
    from cxr_tools.models import create_model, save_model_dir

    torch.manual_seed(0)
    model = create_model(arch, num_classes=14)
    labels = [f"finding_{i}" for i in range(14)]
    meta = {"labels": labels, "training": "supervised", "image_size": size, "preprocessing": ImageOps(size).to_dict()}
    return save_model_dir(model, meta, work / f"{arch}-{size}").parent


def time_engine(listing: Path, model: Path, out: Path, batch_size: int, workers: int) -> tuple[float, float]:
    """``(images/s of the whole run_predict call, images/s of its decode + inference loop)``."""
    from cxr_tools.engine.predict import PredictConfig, run_predict

    t = time.perf_counter()
    res = run_predict(
        PredictConfig(
            input=listing, output=out, model=model, batch_size=batch_size, workers=workers, device="cpu", overwrite=True
        )
    )
    elapsed = time.perf_counter() - t
    assert res.n_failed == 0, res.failures[:3]
    return res.n_ok / elapsed, res.images_per_second


def time_bare(model: Path, n: int, size: int, batch_size: int) -> float:
    import torch

    from cxr_tools.models import load_model_dir

    net, _ = load_model_dir(model)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(min(batch_size, n - s), 1, size, size, generator=gen) for s in range(0, n, batch_size)]
    with torch.inference_mode():
        net(batches[0][:2])  # warm-up (allocator, oneDNN primitives)
        t = time.perf_counter()
        for x in batches:
            torch.sigmoid(net(x)).numpy()
        elapsed = time.perf_counter() - t
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--png-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="0,2", help="decoding processes to compare, comma-separated")
    ap.add_argument("--models", default="conv4@128,resnet18@224")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    ap.add_argument("--docs", action="store_true", help="also print Markdown rows for docs/benchmarks.md")
    args = ap.parse_args()
    import torch

    worker_counts = [int(w) for w in args.workers.split(",")]
    images = png_files(args.data, args.images, args.png_size)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-predict-"))
    listing = work / "inputs.csv"
    listing.write_text("path\n" + "\n".join(str(p) for p in images) + "\n")
    results = []
    for spec in args.models.split(","):
        arch, size_text = spec.split("@")
        size = int(size_text)
        model = model_folder(work, arch, size)
        engine: dict[int, list[float]] = {w: [] for w in worker_counts}
        bare: list[float] = []
        for _ in range(args.repeats):  # alternate, so slow drifts of a shared machine hit every variant alike
            bare.append(time_bare(model, len(images), size, args.batch_size))
            for w in worker_counts:
                engine[w].append(time_engine(listing, model, work / "pred.csv", args.batch_size, w)[0])
        bare_median = statistics.median(bare)
        for w in worker_counts:
            row = {
                "model": arch,
                "input": size,
                "images": len(images),
                "png": args.png_size,
                "batch_size": args.batch_size,
                "workers": w,
                "engine_img_s": round(statistics.median(engine[w]), 2),
                "bare_forward_img_s": round(bare_median, 2),
                "ratio": round(statistics.median(engine[w]) / bare_median, 3),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    host = {
        "cpu": platform.processor() or platform.machine(),
        "cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": [round(x, 1) for x in os.getloadavg()],
        "torch": torch.__version__,
    }
    print(json.dumps({"host": host}))
    for r in results:
        verdict = "meets" if r["ratio"] >= 0.8 else "misses"
        print(
            f"{r['model']}@{r['input']} workers={r['workers']}: predict {r['engine_img_s']} img/s vs bare forward "
            f"{r['bare_forward_img_s']} img/s -> ratio {r['ratio']} ({verdict} the 0.8 goal)"
        )
    if args.docs:
        print("\n| model @ input | images (PNG) | batch | workers | predict img/s | bare forward img/s | ratio |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['model']} @ {r['input']} | {r['images']} ({r['png']}²) | {r['batch_size']} | {r['workers']} "
                f"| {r['engine_img_s']} | {r['bare_forward_img_s']} | {r['ratio']} |"
            )


if __name__ == "__main__":
    main()
