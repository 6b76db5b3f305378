"""``cxr evaluate RUN --data CACHE``: few-shot evaluation on the meta-test classes over fixed, seeded episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    ImagesPerPatientOpt,
    JsonOpt,
    OverwriteOpt,
    QueriesOpt,
    QuietOpt,
    SeedOpt,
    ShotsOpt,
    ThreadsOpt,
    config_from_params,
    emit,
    emit_plan,
    handle_errors,
    output_option,
    progress_for,
)
from cxr_tools.cli.defaults import evaluate_paths

_METRIC_NAMES = {"auc": "AUC", "ap": "AP", "f1": "F1", "precision": "precision", "recall": "recall"}


def _check_threshold(value: str | None) -> str | None:
    """``--threshold``: a usage error (exit 2) naming the accepted forms unless support, none or a probability."""
    if value is None:
        return None
    from cxr_tools.errors import ConfigError
    from cxr_tools.eval.thresholds import parse_rule

    try:
        return parse_rule(value).label
    except ConfigError as exc:
        raise typer.BadParameter(f"{exc.message} {exc.hint}") from None


def metric_header(metric: str, threshold: Any) -> str:
    """A column header: AUC, AP, and F1 / precision / recall with the threshold rule (``F1@support``)."""
    from cxr_tools.eval.thresholds import parse_rule

    return parse_rule(threshold).header(_METRIC_NAMES.get(metric, metric))


def evaluate(
    ctx: typer.Context,
    run: Annotated[
        Path | None,
        typer.Argument(
            help="Finished run directory or its name in $CXR_RUNS (not needed for --method scratch or pixels).",
            show_default="the most recently completed run in $CXR_RUNS",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Cache to evaluate on (cxr preprocess output), or its name in $CXR_CACHE.",
            show_default="the only cache in $CXR_CACHE",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="auto (maml run -> maml, siamese -> prototype, supervised -> finetune), maml, prototype, finetune, "
            "scratch (random init with the budget of --match RUN, or of --adapt-steps and --inner-lr; needs no run), "
            "pixels (logistic regression on the support pixels; needs no run) or linear-probe (logistic regression "
            "on the run's frozen features).",
        ),
    ] = "auto",
    finetune: Annotated[
        str, typer.Option("--finetune", help="Fine-tune the new head only (head) or the whole network (all).")
    ] = "head",
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Number of fixed, seeded episodes.")] = 600,
    ways: Annotated[int, typer.Option("--ways", min=1, help="Meta-test classes per episode (N).")] = 2,
    seen_ways: Annotated[
        int,
        typer.Option(
            "--seen-ways",
            min=0,
            help="Generalized episodes (MetaChest): add this many meta-train classes, scored with what the model "
            "knows of them, to the --ways new ones; images still from the meta-test patients, none carrying a "
            "finding outside the episode's classes, 'No Finding' images as negatives. Reports seen, unseen and "
            "their harmonic mean.",
        ),
    ] = 0,
    shots: ShotsOpt = 5,
    queries: QueriesOpt = 15,
    images_per_patient: ImagesPerPatientOpt = 1,
    seed: SeedOpt = 0,
    threshold: Annotated[
        str,
        typer.Option(
            "--threshold",
            callback=_check_threshold,
            help="Threshold of F1 / precision / recall: support (per episode and class, the one maximising F1 on "
            "the support set's scores after adaptation; never the queries), a probability (0.5), or none (AUC and "
            "AP only). Tables name it: F1@support.",
        ),
    ] = "support",
    meta_split: Annotated[
        str,
        typer.Option(
            "--meta-split",
            help="auto (the MAML run's split, else the cache's, else MetaChest), metachest, a YAML/JSON file or "
            "'train=A,B;val=C;test=D,E'. Changes the episodes: evaluations are comparable only on the same split.",
        ),
    ] = "auto",
    output: Annotated[
        Path | None,
        output_option(
            "Evaluation directory.",
            show_default="RUN/eval (RUN/eval-METHOD for another method); without a run $CXR_RUNS/evaluate/...",
        ),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            "--backbone",
            help="Without a run: the architecture of --method scratch, or a foundation encoder (hf:DIR, "
            "hf:ORG/NAME or a preset such as rad-dino; `cxr models`) that --method linear-probe|prototype|finetune "
            "scores on frozen pretrained weights.",
            show_default="conv4",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=0, help="Fine-tuning steps.", show_default="100 head / 50 all"),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Fine-tuning Adam learning rate.", show_default="0.01 head / 0.001 all")
    ] = None,
    adapt_steps: Annotated[
        int | None,
        typer.Option("--adapt-steps", min=0, help="MAML / scratch inner steps.", show_default="the run's"),
    ] = None,
    inner_lr: Annotated[
        float | None,
        typer.Option("--inner-lr", help="MAML / scratch inner learning rate.", show_default="the run's"),
    ] = None,
    match: Annotated[
        Path | None,
        typer.Option(
            "--match",
            help="Run (or an evaluation of one) whose real adaptation budget (steps, learning rate, optimiser: its "
            "evaluation's, overrides included, else its model card's), meta-split and pool seed --method scratch "
            "copies, so the comparison with it is fair; recorded in summary.json settings.",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Prototype softmax temperature (calibration only).")
    ] = 0.1,
    pairs: Annotated[int, typer.Option("--pairs", min=0, help="Balanced meta-test pairs for Siamese runs.")] = 1000,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            min=0,
            help="Deprecated and ignored: every interval now comes from the variance model (episodes, support and "
            "query patients; docs/science.md).",
        ),
    ] = 1000,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots.")] = True,
    embed_once: Annotated[
        bool,
        typer.Option(
            "--embed-once/--embed-per-episode",
            help="linear-probe / prototype / finetune head: embed each pool image once and index its features per "
            "episode (the same scores within float rounding), or embed every episode's images again (to compare).",
        ),
    ] = True,
    features_dir: Annotated[
        Path | None,
        typer.Option(
            "--features-dir",
            help="Keep the frozen features of linear-probe / prototype / finetune head here (one file per weights, "
            "feature function and cache content), so later evaluations of the same run on the same cache embed "
            "nothing again. Each image is embedded once per evaluation either way.",
            show_default="memory only",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue an interrupted evaluation in the output folder after its finished episodes.",
        ),
    ] = True,
    pool_seed: Annotated[
        int | None,
        typer.Option(
            "--pool-seed",
            help="Seed of the meta-split pools (which patients form the meta-test pool); another seed than the "
            "run trained with mixes its training patients into the meta-test pool, which evaluate refuses.",
            show_default="the run's, else 0",
        ),
    ] = None,
    allow_leak: Annotated[
        bool,
        typer.Option(
            "--allow-leak",
            help="Evaluate a run whose lineage (it, the runs it started from, and any external weights they were "
            "built with, e.g. TorchXRayVision's) trained on a meta-test class or patient, or cannot be checked: "
            "exploration only, the summary and every table then carry the leak.",
        ),
    ] = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Few-shot evaluation of a run on the meta-test classes: per-class AUC, AP, F1/precision/recall, 95% CIs.

    The episode list depends only on the cache, meta-split, --ways/--seen-ways/--shots/--queries/--images-per-patient,
    --episodes and --seed, so every method evaluated with the same options sees the same episodes (cxr compare checks
    the hash); support and query never share a patient. --seen-ways adds meta-train classes (generalized episodes,
    MetaChest): the table then also shows seen, unseen and their harmonic mean. Writes
    summary.json, episodes.csv, scores.csv, episodes.json and plots/ to RUN/eval (or -o).
    """
    with handle_errors():
        from cxr_tools.engine.evaluate import EvaluateConfig
        from cxr_tools.engine.evaluate import evaluate as run_evaluate
        from cxr_tools.errors import ConfigError

        evaluate_paths(ctx)
        cfg = config_from_params(EvaluateConfig, ctx.params)
        if cfg.data is None:
            raise ConfigError("No cache given.", "Pass --data CACHE (a directory written by cxr preprocess).")
        if dry_run:
            from cxr_tools.engine.evaluate import plan_evaluate

            emit_plan(plan_evaluate(cfg), json_output)
            return
        result = run_evaluate(cfg, progress_for(quiet))

    emit(result, json_output, lambda console: render(console, result))


def render(console: Console, result: Any) -> None:
    """Per-class mean [95% interval] of every metric with its episodes and distinct patients, then the overall row,
    pair metrics and where files went.

    On a console narrower than the full table, precision and recall are left to summary.json so that no cell is
    cut.
    """
    from rich import box

    metrics = list(result.overall)
    longest = max([len("overall"), *(len(c) for c in result.per_class)])
    if console.width < longest + 16 + 22 * len(metrics):
        metrics = [m for m in metrics if m in ("auc", "ap", "f1")]
    seen_ways = int(getattr(result, "seen_ways", 0) or 0)
    shape = f"{result.ways}-way + {seen_ways} seen" if seen_ways else f"{result.ways}-way"
    title = (
        f"cxr evaluate: {result.name} — {result.episodes} episodes, {shape} {result.shots}-shot "
        f"{result.queries}-query; mean [95% interval]; threshold rule {result.threshold}"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=f"episode list {result.episode_list_hash}")
    table.add_column("class", no_wrap=True)
    table.add_column("episodes", justify="right", no_wrap=True)
    table.add_column("patients", justify="right", no_wrap=True)
    for m in metrics:
        table.add_column(metric_header(m, result.threshold), justify="right", no_wrap=True)
    generalized = getattr(result, "generalized", None)
    seen = set((generalized or {}).get("seen_classes") or ())
    for cls, values in result.per_class.items():
        first = values[metrics[0]] if metrics else {}
        name = f"{cls} (seen)" if cls in seen else cls
        table.add_row(
            name, str(first.get("n", 0)), str(first.get("patients", "")), *[_cell(values[m]) for m in metrics]
        )
    if generalized:
        for part in ("seen", "unseen", "harmonic"):
            values = generalized[part]
            first = values[metrics[0]] if metrics else {}
            label = "harmonic mean" if part == "harmonic" else f"{part} classes"
            table.add_row(
                label, str(first.get("n", 0)), str(first.get("patients", "")), *[_cell(values[m]) for m in metrics]
            )
    first = result.overall[metrics[0]] if metrics else {}
    table.add_row(
        "overall",
        str(result.episodes),
        str(first.get("patients", "")),
        *[_cell(result.overall[m]) for m in metrics],
        style="bold",
    )
    if getattr(result, "leak", None):
        console.print(f"LEAK (--allow-leak): {result.leak}; not a publishable number.", style="bold red", markup=False)
    for note in getattr(result, "lineage_notes", ()):
        console.print(f"Note: {note}.", markup=False)
    console.print(table)
    if len(metrics) < len(result.overall):
        console.print("(precision and recall: see summary.json, or widen the terminal)")
    if result.threshold == "support":
        console.print(
            "F1/precision/recall@support: thresholds chosen per episode and class on the support set (its scores "
            "after adaptation; optimistic, but the queries never enter it); see episodes.csv's threshold column."
        )
    _print_intervals(console, result.overall, metrics, result.threshold)
    if generalized:
        console.print(
            "Generalized episodes: 'seen classes' / 'unseen classes' average each episode's meta-train / meta-test "
            "classes; 'harmonic mean' is 2·seen·unseen/(seen+unseen) of those means, its interval by the delta "
            "method (docs/science.md)."
        )
    if result.pairs:
        p = result.pairs
        console.print(
            f"pairs: {p['pairs']} balanced meta-test pairs, pair AUC {_num(p['pair_auc'])}, similarity accuracy "
            f"{_num(p['accuracy'])} ± {_num(p['accuracy_ci95'])} at threshold {p['threshold']:.3f} "
            f"({p['threshold_source']})"
        )
    console.print(f"evaluation: {result.output} ({result.seconds:.1f} s)")


def _print_intervals(console: Console, overall: dict[str, Any], metrics: list[str], threshold: Any) -> None:
    """What the intervals include, and the standard errors and degrees of freedom behind the overall ones."""
    parts = []
    for m in metrics:
        est = overall[m]
        if est.get("se") is None or est.get("mean") is None:
            continue
        parts.append(f"{metric_header(m, threshold)} se {_num(est['se'])} (df {est.get('df') or 0:.0f})")
    if parts:
        console.print(
            "95% intervals from one variance model (episodes, support and query patients reused across episodes; "
            "docs/science.md): " + "; ".join(parts)
        )


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(est: dict[str, Any]) -> str:
    if est.get("mean") is None:
        return "n/a"
    low, high = est.get("low"), est.get("high")
    if low is None or high is None:
        return f"{est['mean']:.3f}"
    return f"{est['mean']:.3f} [{low:.3f}, {high:.3f}]"
