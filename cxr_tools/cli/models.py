"""``cxr models [PATTERN]``: the model zoo (names, parameters, input contract, weight sources)."""

from __future__ import annotations

from typing import Annotated

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
        console.print(table)
        console.print("`cxr models NAME` shows one model's card.")

    def render_card(console: Console) -> None:
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
