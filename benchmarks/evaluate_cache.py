"""Benchmark of frozen-feature evaluation with each image embedded once, against embedding every episode again
and against one ``cxr predict`` pass over the same images.

    .venv/bin/python benchmarks/evaluate_cache.py [--patients 1500] [--size 84] [--episodes 600]
        [--arch conv4] [--device cpu] [--data DIR] [--uncached-episodes 60] [--repeats 3]

A phantom dataset (the built-in generator, ``--png-size`` PNGs, kept in ``--data`` between runs) is preprocessed to
a ``--size`` px cache; a randomly initialised (seeded) ``--arch`` supervised model folder of that input size stands
in for a run (``--allow-leak``: a random model has no lineage to check). Then, side by side in one process:

* **uncached**: ``cxr evaluate --method linear-probe --embed-per-episode``, every episode's images embedded
  again (what the tool did before), over ``--episodes`` or, to save time, the first ``--uncached-episodes``
  (scaled linearly: every episode costs the same);
* **cached**: the same evaluation with a fresh embedding store (each pool image embedded once; included in the
  time), then **warm**: ``--method prototype`` on the same store (nothing left to embed);
* **predict**: one :func:`~cxr_tools.engine.predict.run_predict` pass over the cache's source PNGs (every image of
  the cache, decoded from its PNG: what a user runs);
* **embedding variants**: the pool embedded with ``torch.no_grad`` vs ``torch.inference_mode``, contiguous vs
  ``channels_last`` weights and inputs (median of ``--repeats``, on ``--variant-images`` pool images).

Figures: cached ÷ predict (goal ≤ 3; in wall time and in this process's CPU time, which a loaded machine moves
less; predict runs in-process, ``workers=0``) and uncached ÷ cached; scores of the two evaluations agree (max |Δ|).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: CPU seconds of this process (all its threads) per timed call, keyed by its output path: on a machine other jobs
#: load, CPU time still compares the work done (wall time does not; a loaded run once measured predict 10x slower).
CPU_SECONDS: dict[str, float] = {}


def make_cache(data: Path, patients: int, png_size: int, size: int) -> Path:
    """A phantom dataset of ``patients`` at ``png_size`` and its ``size`` px cache (both reused when present)."""
    from cxr_tools.data.caches.format import is_complete
    from cxr_tools.data.synthetic import SyntheticConfig, generate
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    src = data / f"phantom-{patients}-{png_size}"
    cache = data / f"cache-{patients}-{png_size}-{size}"
    if not (src / "images").is_dir():
        print(f"generating {patients} phantom patients at {png_size}² in {src} ...", file=sys.stderr)
        generate(SyntheticConfig(dest=src, patients=patients, size=png_size, seed=0, overwrite=True))
    if not is_complete(cache):
        print(f"preprocessing to {cache} ...", file=sys.stderr)
        preprocess(PreprocessConfig(src=src, output=cache, size=size, overwrite=True))
    return cache


def model_run(work: Path, arch: str, cache: Path) -> Path:
    """A seeded random ``arch`` supervised model folder fitting ``cache`` (a stand-in for a finished run)."""
    import torch

    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.models import create_model, save_model_dir

    reader = open_cache(cache)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=len(reader.labels))
    meta = {
        "labels": list(reader.labels),
        "training": "supervised",
        "image_size": int(reader.image_shape[0]),
        "preprocessing": reader.manifest.get("preprocessing"),
        "extra": {"classes_rule": "base"},
    }
    save_model_dir(model, meta, work / "run" / "model")
    return work / "run"


def evaluate_once(cache: Path, run: Path, out: Path, method: str, episodes: int, device: str, **extra: object):
    from cxr_tools.engine.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(
        data=cache, run=run, output=out, method=method, episodes=episodes, device=device, allow_leak=True, **extra
    )
    t, cpu = time.perf_counter(), time.process_time()
    result = evaluate(config)
    CPU_SECONDS[str(out)] = time.process_time() - cpu
    return time.perf_counter() - t, result


def predict_once(cache: Path, run: Path, out: Path, device: str) -> tuple[float, int]:
    """Seconds of one ``run_predict`` over every cache image's source PNG, and the image count."""
    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.engine.predict import PredictConfig, run_predict

    reader = open_cache(cache)
    listing = out.parent / "inputs.csv"
    listing.write_text("path\n" + "\n".join(reader.index["source_path"].astype(str)) + "\n")
    t, cpu = time.perf_counter(), time.process_time()
    res = run_predict(PredictConfig(input=listing, output=out, model=run, device=device, overwrite=True, workers=0))
    assert res.n_failed == 0, res.failures[:3]
    CPU_SECONDS[str(out)] = time.process_time() - cpu
    return time.perf_counter() - t, res.n_ok


def embedding_variants(cache: Path, run: Path, rows: list[int], device: str, repeats: int) -> dict[str, float]:
    """Seconds to embed ``rows`` (``forward_features``, batches of 256) under each grad mode and memory format."""
    import copy

    import torch

    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.models import load_model_dir
    from cxr_tools.models.inputs import to_model_input

    reader = open_cache(cache)
    model, meta = load_model_dir(run / "model", map_location=device)
    model.eval()
    images = reader.read(rows)
    nets = {"contiguous": model, "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    times: dict[str, list[float]] = {f"{m}+{f}": [] for m in modes for f in nets}
    for _ in range(repeats):
        for mode_name, mode in modes.items():
            for fmt, net in nets.items():
                t = time.perf_counter()
                with mode():
                    for s in range(0, len(images), 256):
                        x = to_model_input(images[s : s + 256], meta, device)
                        if fmt == "channels_last":
                            x = x.contiguous(memory_format=torch.channels_last)
                        net.forward_features(x).float().cpu()
                times[f"{mode_name}+{fmt}"].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def max_score_difference(a: Path, b: Path) -> float:
    import pandas as pd

    x, y = pd.read_csv(a / "scores.csv"), pd.read_csv(b / "scores.csv")
    y = y[y["episode"] < x["episode"].max() + 1].reset_index(drop=True)  # the episodes both evaluated
    assert x[["episode", "class", "row"]].equals(y[["episode", "class", "row"]])
    return float((x["score"] - y["score"]).abs().max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=1500)
    ap.add_argument("--png-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--arch", default="conv4")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    ap.add_argument(
        "--uncached-episodes",
        type=int,
        default=60,
        help="time the (slow) uncached evaluation on the first N episodes (the same episodes: episode i depends on "
        "(seed, i) alone) and scale it to --episodes; 0 = all",
    )
    ap.add_argument("--variant-images", type=int, default=1024, help="pool images the embedding variants embed")
    args = ap.parse_args(argv)
    import torch

    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.methods import embedding_cache

    cache = make_cache(args.data, args.patients, args.png_size, args.size)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-evalcache-"))
    run = model_run(work, args.arch, cache)
    row: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
        "device": args.device,
        "arch": args.arch,
        "size": args.size,
        "cache_images": len(open_cache(cache)),
        "episodes": args.episodes,
    }
    predict_s, n = predict_once(cache, run, work / "pred.csv", args.device)
    row["predict_s"], row["predict_images"] = round(predict_s, 2), n
    store = embedding_cache.store_for(None)
    before = store.computed
    cached_s, cached = evaluate_once(cache, run, work / "cached", "linear-probe", args.episodes, args.device)
    row["cached_s"], row["embedded_images"] = round(cached_s, 2), store.computed - before
    warm_s, _ = evaluate_once(cache, run, work / "warm", "prototype", args.episodes, args.device)
    row["warm_prototype_s"] = round(warm_s, 2)
    row["cached_over_predict"] = round(cached_s / predict_s, 2)
    row["predict_cpu_s"] = round(CPU_SECONDS[str(work / "pred.csv")], 2)
    row["cached_cpu_s"] = round(CPU_SECONDS[str(work / "cached")], 2)
    row["cached_over_predict_cpu"] = round(row["cached_cpu_s"] / row["predict_cpu_s"], 2)
    some = min(args.uncached_episodes or args.episodes, args.episodes)
    plain_s, _ = evaluate_once(cache, run, work / "plain", "linear-probe", some, args.device, embed_once=False)
    scaled = plain_s * args.episodes / some
    row["uncached_episodes"], row["uncached_s"] = some, round(plain_s, 2)
    row["uncached_s_scaled"] = round(scaled, 2)
    row["uncached_over_cached"] = round(scaled / cached_s, 2)
    row["uncached_over_predict"] = round(scaled / predict_s, 2)
    row["max_score_difference"] = max_score_difference(work / "plain", work / "cached")
    episodes = json.loads((cached.output / "episodes.json").read_text())["episodes"]
    pool = sorted({r for ep in episodes for r in ep["support_rows"] + ep["query_rows"]})
    row["pool_images"] = len(pool)
    variants = embedding_variants(cache, run, pool[: args.variant_images], args.device, args.repeats)
    row["embed_s"] = {k: round(v, 3) for k, v in variants.items()}
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
