"""Samples/s of the ``cxr train`` and ``cxr train-siamese`` engines ÷ a bare PyTorch loop.

Setting: a synthetic NIH-layout dataset preprocessed to a 64 px HDF5 cache (90/5/5 patient split), the conv4
backbone (4 × [conv3×3 64, GroupNorm, ReLU, maxpool 2]), batch 32, AdamW (lr 1e-3, weight decay 1e-4),
float32, ``--workers 0``, augmentation on (the default). The engines run their whole fit: cache reads,
augmentation, the runtime's loop and schedule, ``last.pt`` at every epoch end, per-epoch validation (AUC on
the val split / pair AUC on the fixed pair set). The bare loops train the same model with the same optimiser
on in-memory random tensors of the same shapes (``[32, 1, 64, 64]`` images and 14 targets; pairs of such
batches for the Siamese network) and do nothing else. Engine and bare loop alternate in rounds so that load
changes on a shared machine hit both; the median ratio is reported (goal ≥ 0.9). On a shared CPU machine the
wall-clock ratio mostly measures the neighbours, so the ratio of samples per CPU-second of this process is
reported too (the engine's CPU time covers the whole call: set-up, fit, validation, checkpoints, model save).

    python benchmarks/train.py [--steps 40] [--rounds 3] [--size 64] [--threads 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess
from cxr_tools.engine.train import TrainConfig, train
from cxr_tools.engine.train_siamese import SiameseConfig, train_siamese
from cxr_tools.methods.contrastive import contrastive_loss
from cxr_tools.models import create_model
from cxr_tools.models.siamese import SiameseNet

BATCH, MODEL, LABELS, EMBED = 32, "conv4", 14, 256


def make_cache(root: Path, patients: int, size: int) -> Path:
    generate(SyntheticConfig(dest=root / "src", patients=patients, size=max(64, size), seed=0))
    cache = root / "cache"
    preprocess(PreprocessConfig(src=root / "src", output=cache, size=size, fractions=(0.9, 0.05, 0.05), workers=2))
    return cache


def bare_supervised(steps: int, size: int, device: torch.device) -> tuple[float, float]:
    """(samples/s wall, samples per CPU-second) of a plain loop: same model, optimiser, batch shape."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=LABELS).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.rand(BATCH, 1, size, size, device=device)
    y = (torch.rand(BATCH, LABELS, device=device) < 0.2).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()

    return _time(step, steps, device)


def bare_siamese(steps: int, size: int, device: torch.device) -> tuple[float, float]:
    """(pairs/s wall, pairs per CPU-second) of a plain Siamese loop on random in-memory pairs."""
    torch.manual_seed(0)
    net = SiameseNet(create_model(MODEL, num_classes=EMBED)).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xa, xb = torch.rand(BATCH, 1, size, size, device=device), torch.rand(BATCH, 1, size, size, device=device)
    y = (torch.rand(BATCH, device=device) < 0.5).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        za, zb = net(xa, xb)
        contrastive_loss(za, zb, y).backward()
        opt.step()

    return _time(step, steps, device)


def _time(step, steps: int, device: torch.device) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    step()  # first-call allocations; the engine's fit pays them too, but they are not the loop
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return steps * BATCH / wall, steps * BATCH / cpu


def _engine(fn, config) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(samples/s over the fit, samples per CPU-second of the whole engine call incl. set-up and model save)."""
    cpu = time.process_time()
    result = fn(config)
    cpu = time.process_time() - cpu
    return result.samples_per_second, result.steps * BATCH / cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows: dict[str, list[dict[str, float]]] = {"train": [], "train-siamese": []}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-train-") as tmp:
        root = Path(tmp)
        cache = make_cache(root, args.patients, args.size)
        common = dict(
            batch_size=BATCH,
            max_steps=args.steps,
            epochs=1000,
            threads=args.threads,
            device=args.device,
            amp=args.amp,
            workers=args.workers,
            overwrite=True,
            checkpoint_every_minutes=None,
        )
        for r in range(args.rounds):
            for kind in rows:
                if kind == "train":
                    bare, bare_cpu = bare_supervised(args.steps, args.size, device)
                    cfg = TrainConfig(cache=cache, output=root / f"run-{r}", model=MODEL, **common)  # type: ignore[arg-type]
                    engine, engine_cpu = _engine(train, cfg)
                else:
                    bare, bare_cpu = bare_siamese(args.steps, args.size, device)
                    scfg = SiameseConfig(
                        cache=cache, output=root / f"siam-{r}", backbone=MODEL, embedding_dim=EMBED, **common
                    )  # type: ignore[arg-type]
                    engine, engine_cpu = _engine(train_siamese, scfg)
                rows[kind].append(
                    {
                        "bare": bare,
                        "engine": engine,
                        "ratio": engine / bare,
                        "bare_per_cpu_s": bare_cpu,
                        "engine_per_cpu_s": engine_cpu,
                        "cpu_ratio": engine_cpu / bare_cpu,
                    }
                )
            print(
                f"round {r + 1}: "
                + ", ".join(f"{k} {v[-1]['ratio']:.3f} (CPU time {v[-1]['cpu_ratio']:.3f})" for k, v in rows.items()),
                flush=True,
            )
    summary = {
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, device {args.device}",
        "setting": {"model": MODEL, "size": args.size, "batch": BATCH, "steps": args.steps, "amp": args.amp},
        "rounds": rows,
        "median_ratio": {k: statistics.median(r["ratio"] for r in v) for k, v in rows.items()},
        "median_cpu_ratio": {k: statistics.median(r["cpu_ratio"] for r in v) for k, v in rows.items()},
        "median_samples_per_s": {
            k: {"engine": statistics.median(r["engine"] for r in v), "bare": statistics.median(r["bare"] for r in v)}
            for k, v in rows.items()
        },
    }
    for kind, ratio in summary["median_ratio"].items():
        rates = summary["median_samples_per_s"][kind]
        unit = "pairs/s" if kind == "train-siamese" else "images/s"
        cpu = summary["median_cpu_ratio"][kind]
        print(
            f"{kind:14s} engine {rates['engine']:8.1f} {unit}, bare {rates['bare']:8.1f} {unit}, "
            f"ratio {ratio:.3f}, CPU-time ratio {cpu:.3f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
