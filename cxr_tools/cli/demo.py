"""``cxr demo``: the whole pipeline on the built-in synthetic dataset, on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cxr_tools.cli import compare as compare_cli
from cxr_tools.cli.common import (
    ConfigOpt,
    JsonOpt,
    OverwriteOpt,
    SeedOpt,
    ThreadsOpt,
    build_config,
    emit,
    handle_errors,
    output_option,
    progress_for,
)


def demo(
    output: Annotated[Path, output_option("Where the demo writes everything.", "--workdir", show_default=True)] = Path(
        "cxr-demo"
    ),
    patients: Annotated[int, typer.Option("--patients", min=50, help="Synthetic patients to generate.")] = 600,
    size: Annotated[int, typer.Option("--size", min=32, help="Cache image side in pixels.")] = 48,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller budgets: about a minute or two.")] = False,
    episodes: Annotated[
        int | None, typer.Option("--episodes", min=2, help="Evaluation episodes (default 100; 30 with --quick).")
    ] = None,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Run the whole pipeline on synthetic data and print the comparison of all methods.

    Synthetic phantoms → preprocess → supervised base training → Siamese → MAML (plain and Siamese-initialised)
    → evaluate all plus the baselines (random init with the MAML budget, logistic regression on pixels and on
    the supervised features) on the same meta-test episodes → compare.
    """
    with handle_errors():
        from cxr_tools.engine.demo import DemoConfig, run_demo

        cfg = build_config(
            DemoConfig,
            workdir=output,
            patients=patients,
            size=size,
            quick=quick,
            episodes=episodes,
            threads=threads,
            seed=seed,
            overwrite=overwrite,
        )
        result = run_demo(cfg, progress_for())

    def render(console: Console) -> None:
        plan = result.plan
        console.print(
            f"Synthetic dataset: {result.n_images} images of {result.n_patients} patients; cache {result.cache} "
            f"({plan.size}px). Backbone {plan.backbone}; {plan.ways}-way {plan.shots}-shot, {plan.queries} queries; "
            f"{plan.eval_episodes} meta-test episodes."
        )
        for stage, seconds in result.stages.items():
            console.print(f"  {stage:<28} {seconds:7.1f} s")
        console.print(f"  {'total':<28} {sum(result.stages.values()):7.1f} s")
        console.print()
        compare_cli.render(console, result.comparison)
        console.print(f"\nEverything is in {result.workdir}; rerun any `cxr` command on it.")

    emit(result, json_output, render)
