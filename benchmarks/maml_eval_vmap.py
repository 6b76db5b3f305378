"""Whether MAML adaptation at evaluation gains from running several episodes at once (``torch.func.vmap``).

    .venv/bin/python benchmarks/maml_eval_vmap.py [--arch conv4] [--size 84] [--episodes 4] [--repeats 2]

``--episodes`` episodes of ``cxr evaluate``'s default shape (2-way 5-shot 15-query: 15 support and 45 query
images) are adapted with 5 first-order SGD steps and their queries scored, (a) one after the other with
:func:`cxr_tools.methods.maml.adapt` (what ``cxr evaluate`` does) and (b) all at once: per-episode parameters
stacked, ``vmap(grad_and_value(support loss))`` per step, ``vmap`` of the query forward. Prints the seconds of
each (alternating, per repeat) and the largest difference of the query logits.

With batched weights, ``vmap`` turns every convolution into a grouped one; on a CPU its backward pass is far slower
than separate convolutions, so (b) loses (docs/benchmarks.md), and ``cxr evaluate`` adapts episode by episode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="conv4")
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    from torch.func import functional_call, grad_and_value, vmap

    from cxr_tools.methods.maml import MamlConfig, adapt, frozen_batchnorm, multilabel_bce
    from cxr_tools.methods.maml.functional import trainable_params
    from cxr_tools.models import create_model

    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=2).eval()
    cfg = MamlConfig(inner_lr=0.01, adapt_steps=5, first_order=True, engine="func")
    e, size = args.episodes, args.size
    sx, qx = torch.rand(e, 15, 1, size, size), torch.rand(e, 45, 1, size, size)
    sy = (torch.rand(e, 15, 2) < 0.4).float()

    def one_by_one() -> torch.Tensor:
        out = []
        for i in range(e):
            adapted = adapt(model, sx[i], sy[i], cfg)
            with torch.no_grad():
                out.append(adapted(qx[i]))
        return torch.stack(out)

    def batched() -> torch.Tensor:
        def loss_of(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return multilabel_bce(functional_call(model, params, (x,)), y)

        step = vmap(grad_and_value(loss_of))
        params = {n: p.detach().expand(e, *p.shape) for n, p in trainable_params(model).items()}
        with frozen_batchnorm(model):
            for _ in range(cfg.adapt_steps):
                grads, _ = step(params, sx, sy)
                params = {n: params[n] - cfg.inner_lr * grads[n] for n in params}
            with torch.no_grad():
                return vmap(lambda p, x: functional_call(model, p, (x,)))(params, qx)

    times: dict[str, list[float]] = {"one_by_one": [], "vmap": []}
    outs = {}
    for _ in range(args.repeats):
        for name, fn in (("one_by_one", one_by_one), ("vmap", batched)):
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(round(time.perf_counter() - t, 3))
    diff = float((outs["one_by_one"] - outs["vmap"]).abs().max())
    row = {"arch": args.arch, "size": size, "episodes": e, "threads": torch.get_num_threads(), "seconds": times}
    print(json.dumps({**row, "max_logit_difference": diff}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
