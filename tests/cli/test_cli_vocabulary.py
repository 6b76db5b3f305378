"""One flag vocabulary: the same concept has the same primary flag in every command of ``cxr``.

Walks the real Typer app, so a new command or option is checked without touching this file.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import typer

from cxr_tools.cli.app import app

# Concept -> (canonical primary flag, spellings that name it: parameter names or flags without dashes, - as _).
CONCEPTS: dict[str, tuple[str, set[str]]] = {
    "checkpoint steps": (
        "--checkpoint-every-steps",
        {"checkpoint_every_steps", "checkpoint_every", "checkpoint_steps", "ckpt_every"},
    ),
    "checkpoint minutes": (
        "--checkpoint-every-minutes",
        {"checkpoint_every_minutes", "checkpoint_minutes", "checkpoint_every_min"},
    ),
    "log steps": ("--log-every-steps", {"log_every_steps", "log_every", "log_steps"}),
    "device": ("--device", {"device"}),
    "threads": ("--threads", {"threads", "num_threads", "torch_threads"}),
    "workers": ("--workers", {"workers", "num_workers", "jobs"}),
    "seed": ("--seed", {"seed"}),
    "pool seed": ("--pool-seed", {"pool_seed"}),
    "meta-split": ("--meta-split", {"meta_split"}),
    "output": ("--output", {"output", "out", "dest", "workdir", "o"}),
    "overwrite": ("--overwrite", {"overwrite", "force"}),
    "resume": ("--resume", {"resume"}),
    "quiet": ("--quiet", {"quiet", "q"}),
    "json": ("--json", {"json", "json_output"}),
    "config": ("--config", {"config"}),
    "images per patient": ("--images-per-patient", {"images_per_patient"}),
}

# Renamed on the trainer branch (train, train-siamese, meta-train take the vocabulary there): the lead deletes
# this set after merging, and the test must then pass without it.
TRAINER_EXCEPTIONS_UNTIL_MERGE: set[tuple[str, str]] = {
    ("train", "checkpoint_every"),
    ("train", "checkpoint_minutes"),
    ("train", "log_every"),
    ("train-siamese", "checkpoint_every"),
    ("train-siamese", "checkpoint_minutes"),
    ("train-siamese", "log_every"),
    ("meta-train", "log_every"),
}


def commands() -> dict[str, Any]:
    """Every leaf command of the app by its full name (``download nih``)."""
    out: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            out[path] = command

    walk(typer.main.get_command(app), "")
    return out


def _primary(param: Any) -> str | None:
    return next((o for o in param.opts if o.startswith("--")), None)


def _spellings(param: Any) -> set[str]:
    return {param.name} | {o.lstrip("-").replace("-", "_") for o in param.opts}


def _options():
    for path, command in commands().items():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                yield path, param


def test_every_concept_has_its_canonical_flag_in_every_command():
    wrong = []
    for path, param in _options():
        if (path, param.name) in TRAINER_EXCEPTIONS_UNTIL_MERGE:
            continue
        for concept, (flag, spellings) in CONCEPTS.items():
            if _spellings(param) & spellings and _primary(param) != flag:
                wrong.append(f"cxr {path} {_primary(param)} ({concept}: use {flag})")
    assert not wrong, "two spellings of one concept:\n" + "\n".join(wrong)


def test_one_parameter_name_has_one_flag_across_commands():
    flags: dict[str, set[str]] = defaultdict(set)
    where: dict[str, list[str]] = defaultdict(list)
    for path, param in _options():
        if (path, param.name) in TRAINER_EXCEPTIONS_UNTIL_MERGE:
            continue
        flags[param.name].add(str(_primary(param)))
        where[param.name].append(f"cxr {path} {_primary(param)}")
    clashes = {name: where[name] for name, found in flags.items() if len(found) > 1}
    assert not clashes, f"one config key, several flags: {clashes}"


def test_short_o_is_always_output():
    wrong = [f"cxr {path} {_primary(p)}" for path, p in _options() if "-o" in p.opts and _primary(p) != "--output"]
    assert not wrong, f"-o must mean --output: {wrong}"


def test_the_check_catches_a_second_spelling():
    """The walk itself works: a toy app with --checkpoint-every beside --checkpoint-every-steps is caught."""
    toy = typer.Typer()

    @toy.command()
    def a(checkpoint_every: int = typer.Option(1, "--checkpoint-every")) -> None:
        pass

    @toy.command()
    def b(checkpoint_every_steps: int = typer.Option(1, "--checkpoint-every-steps")) -> None:
        pass

    params = [(n, p) for n, c in typer.main.get_command(toy).commands.items() for p in c.params]  # type: ignore[attr-defined]
    steps_flag, steps = CONCEPTS["checkpoint steps"]
    wrong = [n for n, p in params if _spellings(p) & steps and _primary(p) != steps_flag]
    assert wrong == ["a"]
