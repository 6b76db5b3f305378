"""How many inner steps one MAML task costs: the constant behind ``cxr meta-train``'s early estimate.

    .venv/bin/python benchmarks/estimate.py [--models conv4,resnet18] [--size 64] [--adapt-steps 5] [--repeats 3]

For each model and order (first, second) one task of a 2-way 7-shot, 10-query episode (random images) runs through
the engine ``auto`` picks, with :class:`cxr_tools.runtime.estimate.ForwardClock`'s hook: the second interval
between forward calls is the unit the clock measures (one inner step, warm-up excluded). Printed per row: that
unit, the whole task, their ratio (median over ``--repeats`` tasks after one warm-up) and the ratio the estimate
assumes (:func:`cxr_tools.runtime.estimate.maml_step_units` for one task). The estimate is good where the two
ratios agree; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cxr_tools.methods.maml import MamlConfig, meta_backward, resolve_engine
from cxr_tools.models.factory import create_for_images
from cxr_tools.runtime.estimate import maml_step_units


def task_ratio(name: str, size: int, adapt_steps: int, first_order: bool, repeats: int) -> tuple[float, float]:
    """(median inner-step unit in seconds, median task seconds / unit) over ``repeats`` tasks after a warm-up."""
    model = create_for_images(name, size, "benchmark", num_classes=2)
    stamps: list[float] = []
    model.register_forward_pre_hook(lambda module, args: stamps.append(time.perf_counter()))
    cfg = MamlConfig(0.01, adapt_steps, first_order, resolve_engine("auto", quiet=True))
    g = torch.Generator().manual_seed(0)
    task = (
        torch.rand(14, 1, size, size, generator=g),
        torch.randint(0, 2, (14, 2), generator=g).float(),
        torch.rand(20, 1, size, size, generator=g),
        torch.randint(0, 2, (20, 2), generator=g).float(),
    )
    units, ratios = [], []
    for i in range(repeats + 1):
        stamps.clear()
        began = time.perf_counter()
        meta_backward(model, [task], cfg)
        total = time.perf_counter() - began
        unit = stamps[2] - stamps[1]
        if i:  # the first task warms up
            units.append(unit)
            ratios.append(total / unit)
    return statistics.median(units), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="conv4,resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--adapt-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':10} {'order':6} {'unit s':>7} {'task/unit':>9} {'assumed':>8}")
    for name in args.models.split(","):
        for first_order in (False, True):
            unit, ratio = task_ratio(name, args.size, args.adapt_steps, first_order, args.repeats)
            assumed = maml_step_units(args.adapt_steps, 1, first_order)
            order = "first" if first_order else "second"
            print(f"{name:10} {order:6} {unit:7.3f} {ratio:9.1f} {assumed:8.1f}", flush=True)


if __name__ == "__main__":
    main()
