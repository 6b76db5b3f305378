"""GPU smoke check: every training and inference command runs on CUDA with mixed precision, and is right.

On a tiny synthetic NIH-layout dataset (``cxr download synthetic``, preprocessed to a 32 px cache) it runs, on
one device, for a few steps each:

* ``train`` (conv4, ``--amp``) and ``train-siamese`` (conv4, ``--amp``): the step losses fall (mean of the last
  third of the steps below the mean of the first third);
* ``meta-train`` (conv4, second-order MAML, ``--amp``) twice: with bf16 and with fp16, the dtype a GPU without
  bf16 (V100, T4) gets - the fp16 run makes :func:`cxr_tools.runtime.devices.resolve_amp` see such a GPU (it
  asks ``torch.cuda.is_bf16_supported``), so the loop's GradScaler path runs end to end; at every meta-step
  the support loss falls during adaptation (the query loss of a few dozen meta-steps is too noisy to test)
  and every loss is finite;
* the meta-gradient of one meta-batch of real episodes under bf16 and under fp16 (through a GradScaler, then
  unscaled, exactly as the training loop does) against float32's (TF32 off): relative L2 error and cosine
  similarity within ``GRAD_TOL`` (why those limits: see there);
* ``evaluate`` (the meta-trained model, a few episodes) and ``predict`` (the trained model on 64 images, with
  and without ``--amp``; the probabilities agree within ``PREDICT_TOL``).

It prints a table and exits 1 when a check fails. Without a CUDA device it prints "no CUDA device: skipped"
and exits 0 (CI has none). ``--device cpu`` is a dry run of the same logic on the CPU: the engines run in
float32 there (``--amp`` is CUDA-only), and the meta-gradient comparison uses CPU autocast in bf16 and fp16.

    python benchmarks/gpu_smoke.py [--device cuda] [--steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIZE, PATIENTS = 32, 300
WAYS, SHOTS, QUERIES, ADAPT_STEPS, META_BATCH = 2, 2, 3, 2, 2
# Meta-gradient under AMP vs float32: (max relative L2 error of the flattened gradient, min cosine similarity).
# Low precision moves a MAML meta-gradient a lot: on the CPU dry run (CPU autocast, conv4 at random
# initialisation, 2 inner steps, second order) fp16 gave error 0.34 / cosine 0.94 and bf16 0.49 / 0.88, and even
# a plain supervised gradient of that model differs by 0.05 (fp16) and 0.12 (bf16). So the limits certify the
# scaling, not the precision: a lost, doubled or twice-applied loss scale gives an error >= 1, a gradient
# underflowed to zero an error of 1 and a cosine near 0.
GRAD_TOL = {"fp16": (0.75, 0.75), "bf16": (0.75, 0.75)}
PREDICT_TOL = 0.05  # max |p_amp - p_fp32| over every image and class (bf16 logits are good to ~1 %)


def say(stage: str) -> None:
    print(f"[gpu_smoke {time.strftime('%H:%M:%S')}] {stage}", file=sys.stderr, flush=True)


@dataclass
class Check:
    name: str
    setting: str
    value: str
    limit: str
    ok: bool


def make_data(root: Path) -> tuple[Path, Path]:
    """A synthetic NIH-layout dataset (what ``cxr download synthetic`` writes) and its 32 px cache."""
    from cxr_tools.data.synthetic import SyntheticConfig, generate
    from cxr_tools.engine.preprocess import PreprocessConfig, preprocess

    data, cache = root / "synthetic", root / "cache"
    generate(SyntheticConfig(dest=data, patients=PATIENTS, size=64, seed=0, overwrite=True))
    preprocess(PreprocessConfig(src=data, output=cache, size=SIZE, workers=0, overwrite=True))
    return data, cache


def step_losses(run: Path, key: str = "loss") -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [float(r[key]) for r in map(json.loads, lines) if r.get("kind") == "step" and key in r]


def adapts(name: str, setting: str, run: Path) -> Check:
    """MAML's query loss over a few dozen meta-steps is too noisy to fall reliably; what must fall at every step
    is the support loss during adaptation (the inner loop's gradient under AMP), with a finite meta-loss."""
    before, after = step_losses(run, "support_loss_before"), step_losses(run, "support_loss_last_step")
    meta = step_losses(run)
    n = len(before)
    ok = n >= 3 and all(map(math.isfinite, before + after + meta)) and sum(after) < sum(before)
    value = f"support loss {sum(before) / max(n, 1):.4f} -> {sum(after) / max(n, 1):.4f} ({n} steps)"
    return Check(name, setting, value, "falls, finite", ok)


def falls(name: str, setting: str, losses: list[float]) -> Check:
    third = max(1, len(losses) // 3)
    first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
    ok = len(losses) >= 3 and all(map(math.isfinite, losses)) and last < first
    return Check(name, setting, f"loss {first:.4f} -> {last:.4f} ({len(losses)} steps)", "falls, finite", ok)


@contextlib.contextmanager
def without_bf16() -> Iterator[None]:
    """Make ``resolve_amp`` pick fp16, as it does on a GPU without bf16 (V100, T4)."""
    import torch

    saved = torch.cuda.is_bf16_supported
    torch.cuda.is_bf16_supported = lambda *a, **k: False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.is_bf16_supported = saved  # type: ignore[assignment]


def run_trainers(root: Path, cache: Path, device: str, steps: int, checks: list[Check]) -> Path:
    from cxr_tools.engine.train import TrainConfig, train
    from cxr_tools.engine.train_siamese import SiameseConfig, train_siamese

    common: dict[str, Any] = dict(
        max_steps=steps, epochs=1000, batch_size=32, lr=3e-3, device=device, amp=True, workers=0,
        overwrite=True, checkpoint_every_minutes=None, log_every_steps=1, schedule="none",
    )  # fmt: skip
    amp = "amp" if device.startswith("cuda") else "fp32 (cpu)"
    train(TrainConfig(cache=cache, output=root / "train", model="conv4", **common))
    checks.append(falls("train", f"conv4, {amp}", step_losses(root / "train")))
    train_siamese(SiameseConfig(cache=cache, output=root / "siamese", backbone="conv4", embedding_dim=64, **common))
    checks.append(falls("train-siamese", f"conv4, {amp}", step_losses(root / "siamese")))
    return root / "train"


def meta_config(cache: Path, output: Path, device: str, steps: int) -> Any:
    from cxr_tools.engine.meta_train import MetaTrainConfig

    return MetaTrainConfig(
        cache=cache, output=output, ways=WAYS, shots=SHOTS, queries=QUERIES, adapt_steps=ADAPT_STEPS,
        inner_lr=0.05, meta_lr=3e-3, meta_batch=META_BATCH, episodes=steps * META_BATCH, backbone="conv4",
        engine="func", val_every=steps, val_episodes=0, device=device, amp=True, overwrite=True,
        checkpoint_every_minutes=None, log_every_steps=1,
    )  # fmt: skip


def run_meta_train(root: Path, cache: Path, device: str, steps: int, checks: list[Check]) -> Path:
    import torch

    from cxr_tools.engine.meta_train import meta_train

    cuda = device.startswith("cuda")
    for dtype in ("bf16", "fp16") if cuda else ("fp32",):  # --amp is CUDA-only: one float32 run on the CPU
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            checks.append(Check("meta-train", "bf16", "this GPU has no bf16", "-", True))
            continue
        out = root / f"maml-{dtype}"
        with without_bf16() if dtype == "fp16" else contextlib.nullcontext():
            meta_train(meta_config(cache, out, device, steps))
        checks.append(adapts("meta-train", f"2nd order, {dtype}" + ("" if cuda else " (cpu)"), out))
        if dtype == "fp16":  # the run really went through an enabled GradScaler (its state is in last.pt)
            last = next(out.rglob("last.pt"), None)
            scaler = torch.load(last, map_location="cpu", weights_only=True).get("scaler") if last else None
            scale = (scaler or {}).get("scale")
            value = f"loss scale {scale:g} after {steps} meta-steps" if scale else "no scaler state"
            checks.append(Check("meta-train", "fp16 GradScaler", value, "scaler enabled", bool(scale)))
    return out


def meta_gradients(cache: Path, device: str, checks: list[Check]) -> None:
    """One meta-batch of real episodes: the meta-gradient under bf16 and fp16 autocast against float32's."""
    import torch

    from cxr_tools.data.caches.format import open_cache
    from cxr_tools.data.sampling.episodes import EpisodeOptions
    from cxr_tools.data.sampling.meta_samplers import meta_samplers
    from cxr_tools.methods.episodes import meta_gradient
    from cxr_tools.methods.maml import MamlConfig
    from cxr_tools.models.factory import initial_model
    from cxr_tools.runtime.devices import AmpSettings, autocast_context, make_grad_scaler

    dev = torch.device(device)
    reader = open_cache(cache)
    spec = EpisodeOptions(ways=WAYS, shots=SHOTS, queries=QUERIES).episode_spec
    _, sampler, _, _ = meta_samplers(reader, "auto", 0, spec, validation=False)
    torch.manual_seed(0)
    model, _ = initial_model(None, "conv4", WAYS, int(reader.image_shape[0]))
    model.to(dev)
    maml = MamlConfig(inner_lr=0.05, adapt_steps=ADAPT_STEPS, first_order=False, engine="func")
    keys = [(0, 1, 0, t) for t in range(META_BATCH)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # only for the scaler's unscale_

    def gradient(amp: AmpSettings) -> tuple[torch.Tensor, float]:
        scaler = make_grad_scaler(dev, amp)
        for _ in range(20):  # an overflowing scale is halved and the batch redone, as the loop's skipped steps do
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(dev, amp):
                meta_gradient(model, sampler, reader, keys, maml, dev, lambda loss: scaler.scale(loss).backward())
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.unscale_(optimizer)
            flat = torch.cat([p.grad.detach().flatten().double() for p in params])
            if bool(torch.isfinite(flat).all()):
                return flat, scale
            scaler.update()
        raise RuntimeError("the fp16 meta-gradient overflowed at every scale tried")

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true float32 reference
    try:
        reference, _ = gradient(AmpSettings(False))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for dtype, (max_err, min_cos) in GRAD_TOL.items():
        if dev.type == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        grad, scale = gradient(AmpSettings(True, dtype))
        err = float((grad - reference).norm() / reference.norm())
        cos = float(torch.nn.functional.cosine_similarity(grad, reference, dim=0))
        setting = f"{dtype} autocast" + (f", loss scale {scale:g}" if dtype == "fp16" else "")
        checks.append(
            Check("meta-gradient vs fp32", setting, f"rel. error {err:.4f}, cosine {cos:.5f}",
                  f"<= {max_err}, >= {min_cos}", err <= max_err and cos >= min_cos)
        )  # fmt: skip


def run_inference(root: Path, data: Path, cache: Path, model_run: Path, maml_run: Path, device: str,
                  checks: list[Check]) -> None:  # fmt: skip
    import pandas as pd

    from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
    from cxr_tools.engine.predict import PredictConfig, run_predict

    result = evaluate(
        EvaluateConfig(data=cache, run=maml_run, output=root / "eval", episodes=4, ways=WAYS, shots=SHOTS,
                       queries=QUERIES, device=device, bootstrap=100, plots=False, overwrite=True)
    )  # fmt: skip
    auc = float(result.overall["auc"]["mean"])
    checks.append(Check("evaluate", "maml, 4 episodes", f"AUC {auc:.3f}", "finite", math.isfinite(auc)))

    listing = root / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(data.rglob("*.png"))[:64]))
    probs = {}
    for amp in (False, True):
        out = root / f"pred-{'amp' if amp else 'fp32'}.csv"
        res = run_predict(PredictConfig(input=listing, output=out, model=model_run, device=device, amp=amp,
                                        workers=0, overwrite=True))  # fmt: skip
        probs[amp] = pd.read_csv(out)[list(res.labels)].to_numpy(dtype=float)  # one probability column a class
        ok = res.n_failed == 0 and res.n_ok == 64
        checks.append(Check("predict", "amp" if amp else "fp32", f"{res.n_ok} ok, {res.n_failed} failed", "64 ok", ok))
    diff = float(abs(probs[True] - probs[False]).max())
    checks.append(Check("predict amp vs fp32", "max |dp|", f"{diff:.5f}", f"<= {PREDICT_TOL}", diff <= PREDICT_TOL))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run of the logic")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps / meta-steps per training run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    device = args.device
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.machine()
    checks: list[Check] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxr-gpu-smoke-") as tmp:
        root = Path(tmp)
        say("synthetic dataset and cache")
        data, cache = make_data(root)
        say("train, train-siamese")
        model_run = run_trainers(root, cache, device, args.steps, checks)
        say("meta-train")
        maml_run = run_meta_train(root, cache, device, args.steps, checks)
        say("meta-gradients under AMP")
        meta_gradients(cache, device, checks)
        say("evaluate, predict")
        run_inference(root, data, cache, model_run, maml_run, device, checks)
    seconds = time.perf_counter() - started
    print(f"{device} ({name}), torch {torch.__version__}, Python {platform.python_version()}, {seconds:.0f} s")
    width = max(len(c.name) + len(c.setting) for c in checks) + 3
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {(c.name + ' (' + c.setting + ')'):{width}s} {c.value:45s} {c.limit}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"device": device, "name": name, "checks": [vars(c) for c in checks]}, indent=2)
        )
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
