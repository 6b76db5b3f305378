"""``cxr models [PATTERN]``: the model zoo (names, parameters, input contract, weight sources)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_tools.cli.common import ConfigOpt, JsonOpt, build_config, emit, handle_errors


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def models(
    pattern: Annotated[
        str | None,
        typer.Argument(help="A model name (shows its card), a wildcard like 'resnet*', or a substring."),
    ] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List the model zoo: parameters, input contract (1 channel, size, intensity range), weights."""
    with handle_errors():
        from cxr_tools.engine.models import ModelsConfig, list_zoo
        from cxr_tools.models.registry import NORMALISATION_HELP

        cfg = build_config(ModelsConfig, pattern=pattern)
        result = list_zoo(cfg)

    def render_table(console: Console) -> None:
        table = Table(title="cxr-tools model zoo")
        for column, justify in (
            ("name", "left"),
            ("family", "left"),
            ("params", "right"),
            ("input", "left"),
            ("norm", "left"),
            ("embedding", "right"),
            ("weights", "left"),
        ):
            table.add_column(column, justify=justify, no_wrap=column == "name")  # type: ignore[arg-type]
        for card in result.models:
            table.add_row(
                card.name,
                card.family,
                _params(card.num_params),
                f"{card.in_chans}×{card.image_size} {card.normalisation}",
                card.norm,
                str(card.num_features),
                ",".join(w.name for w in card.weights) or "-",
            )
        if result.models:
            console.print(table)
        if result.encoders:
            console.print(_encoder_table(result.encoders))
            console.print(
                "Foundation encoders: --backbone NAME or hf:DIR / hf:ORG/NAME (files from a local folder or the "
                "Hugging Face cache; CXR_OFFLINE=1 never downloads); pip install 'cxr-tools[foundation]'.",
                markup=False,
            )
        console.print("`cxr models NAME` shows one model's card.")

    def render_card(console: Console) -> None:
        if result.encoders:
            _render_preset(console, result.encoders[0])
            return
        card = result.models[0]
        rows = [
            ("name", card.name),
            ("family", card.family),
            ("parameters", f"{card.num_params:,} ({_params(card.num_params)}, with a {card.num_classes}-output head)"),
            ("input", f"{card.in_chans} channel, {card.image_size} px default (>= {card.min_image_size} px)"),
            ("normalisation", f"{card.normalisation}: {NORMALISATION_HELP[card.normalisation]}"),
            ("embedding size", str(card.num_features)),
            ("norm layers", card.norm),
        ]
        table = Table(title=f"model card: {card.name}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in rows:
            table.add_row(key, value)
        table.add_row("weights", "none (random initialisation)")
        for w in card.weights:
            table.add_row(
                "", f"{w.name}: {w.description}; input {w.normalisation}, {w.image_size} px; file {w.file_name}"
            )
        table.add_row("notes", card.notes)
        console.print(table)

    emit(result, json_output, render_card if result.detail else render_table)


def _trained_on(preset: Any) -> str:
    return "; ".join(d.dataset for d in preset.card.data)


def _encoder_table(encoders: Any) -> Table:
    table = Table(title="foundation encoders (--backbone NAME)")
    for column in ("name", "repo", "library", "input", "embedding", "licence", "trained on"):
        table.add_column(column, no_wrap=column == "name")
    for p in encoders:
        table.add_row(
            p.name, p.repo, p.library, f"1×{p.image_size} → 3 ch", str(p.embedding_size), p.licence, _trained_on(p)
        )
    return table


def _render_preset(console: Console, preset: Any) -> None:
    table = Table(title=f"foundation encoder: {preset.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("name", f"{preset.name} (= --backbone hf:{preset.repo})"),
        ("repo", preset.repo),
        ("library", preset.library),
        ("licence", preset.licence),
        ("parameters", preset.params),
        ("input", f"grey replicated to 3 channels; {preset.input} (the processor's values are read at load time)"),
        ("embedding", f"{preset.embedding_size}: {preset.embedding}"),
        ("data card", preset.card.title),
    ]
    for key, value in rows:
        table.add_row(key, value)
    for d in preset.card.data:
        labels = f"labels: {', '.join(d.classes)}" if d.classes else "no class labels"
        seen = f"; images of source '{d.source}'" if d.source else ""
        table.add_row("", f"{d.dataset} ({labels}{seen})")
    table.add_row("reference", preset.card.reference)
    console.print(table)
