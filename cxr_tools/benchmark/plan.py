"""The benchmark plan file (YAML): what to run, checked before anything runs.

Top-level keys (``examples/benchmark/phantoms.yaml`` and ``nih.yaml`` are whole, commented plans):

``cache`` and ``output`` (required; relative paths are taken from the current directory, like every ``cxr``
path), ``methods`` (required: a mapping of row names to method settings), ``shots`` (required, e.g.
``[1, 5, 10]``), ``meta_split`` (default ``auto``), ``backbones`` (default ``[conv4]``), ``ways`` (2; a list runs
each), ``seen_ways`` (0: standard episodes; a list runs each: generalized episodes with that many meta-train
classes beside the ``ways`` new ones, compared on the harmonic mean of seen and unseen AUC), or instead of both
``shapes`` (a list of ``[ways, seen_ways]`` pairs, for a grid that is no product: MetaChest's ``metachest.yaml``),
``queries`` (15), ``seeds`` (training seeds of the trained methods: a list, or a count ``n`` meaning ``0..n-1``;
default ``[0, 1]``, so every trained row's interval and tests include the seed-to-seed variance; with one seed
the report says its verdicts are about those trained models), ``episodes`` (600),
``episode_seed`` (0: the seed of the evaluation episodes, the same for every method, shot count and training
seed so every comparison is paired), ``reference`` (default the first method), ``device`` (``auto``),
``threads``, the command sections ``train``, ``train_siamese``, ``meta_train``, ``evaluate`` (options every
method's command of that name gets), and ``slurm`` (partition, time, gpus, account, cpus_per_task, mem, extra).

A method is ``NAME: {method: KIND, ...}`` (``method`` defaults to ``NAME``, so ``maml: {}`` works and two
variants of one kind can sit side by side) with the same command sections, ``backbones``, ``train_shots``
(meta-train once at this shot count and evaluate that run at every shot count; default: meta-train per shot
count) and, for ``scratch``, ``match`` (a MAML-kind method of the plan whose adaptation budget — as its first
seed's evaluation used it, evaluation options included — and episodes it copies). The ``encoder-linear-probe``,
``encoder-prototype`` and ``encoder-fine-tune`` kinds score pretrained foundation encoders without training; their
own ``backbones`` name the encoders (``hf:DIR``, ``hf:ORG/NAME`` or presets such as ``rad-dino``).
Section keys are the commands' own flags (``--checkpoint-every-steps`` is ``checkpoint_every_steps``), checked
as the flags are; flags the plan sets itself (outputs, seeds, shots, ways, the cache...) are refused there.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tools.errors import ConfigError

#: Method kind → the training commands it needs (in order) and the ``cxr evaluate --method`` it is scored with.
METHODS: dict[str, tuple[tuple[str, ...], str]] = {
    "maml": (("meta-train",), "maml"),
    "fomaml": (("meta-train",), "maml"),
    "maml-from-siamese": (("train-siamese", "meta-train"), "maml"),
    "protonet": (("meta-train",), "prototype"),
    "siamese-prototype": (("train-siamese",), "prototype"),
    "fine-tune": (("train",), "finetune"),
    "transfer": (("train",), "finetune"),
    "linear-probe": (("train",), "linear-probe"),
    "pixels": ((), "pixels"),
    "scratch": ((), "scratch"),
    # a pretrained foundation encoder scored on frozen features, no training (its backbones: hf:DIR or presets)
    "encoder-linear-probe": ((), "linear-probe"),
    "encoder-prototype": ((), "prototype"),
    "encoder-fine-tune": ((), "finetune"),
}
META_KINDS = frozenset({"maml", "fomaml", "maml-from-siamese"})
#: Kinds trained by ``cxr meta-train`` (per shot count, or once with ``train_shots``).
EPISODIC_KINDS = META_KINDS | {"protonet"}
#: Options a kind's commands get before the plan's own (which win): ``transfer`` is MetaChest's transfer-learning
#: baseline (Montalvo-Lezama & Fuentes-Pineda 2026, "BatchBased"): the supervised run on the meta-train classes,
#: then per episode a fresh head trained alone on the support set, 100 steps at learning rate 0.005.
KIND_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "transfer": {"evaluate": ("--finetune", "head", "--steps", "100", "--lr", "0.005")},
}
ENCODER_KINDS = frozenset({"encoder-linear-probe", "encoder-prototype", "encoder-fine-tune"})
SECTIONS: dict[str, str] = {
    "train": "train",
    "train_siamese": "train-siamese",
    "meta_train": "meta-train",
    "evaluate": "evaluate",
}
_COMMON = {
    "--output",
    "--seed",
    "--device",
    "--threads",
    "--resume",
    "--overwrite",
    "--requeue",
    "--json",
    "--quiet",
    "--config",
    "--meta-split",
    "",
}
#: Flags each step's command line gets from the plan itself ("" = a positional argument).
CONTROLLED: dict[str, frozenset[str]] = {
    "train": frozenset(_COMMON | {"--model", "--classes"}),
    "train-siamese": frozenset(_COMMON | {"--backbone", "--classes", "--backbone-from"}),
    "meta-train": frozenset(_COMMON | {"--ways", "--shots", "--backbone", "--init", "--algorithm"}),
    "evaluate": frozenset(
        _COMMON
        | {"--data", "--method", "--ways", "--seen-ways", "--shots", "--queries", "--episodes", "--backbone", "--match"}
    ),
}
_TOP = {
    "cache",
    "output",
    "methods",
    "shots",
    "meta_split",
    "backbones",
    "ways",
    "seen_ways",
    "shapes",
    "queries",
    "seeds",
    "episodes",
    "episode_seed",
    "reference",
    "device",
    "threads",
    "slurm",
    *SECTIONS,
}
_METHOD = {"method", "backbones", "train_shots", "match", *SECTIONS}
_SLURM = {"partition", "time", "gpus", "account", "cpus_per_task", "mem", "extra"}

#: Training seeds when the plan names none: two, so a trained method's seed variance is measured.
DEFAULT_SEEDS = (0, 1)


class PlanError(ConfigError):
    """A plan file names an unknown key, method or option, or a bad value: a usage error (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Flag:
    """How one option of a command is written on its command line."""

    on: str
    off: str | None = None
    is_bool: bool = False
    multiple: bool = False


@dataclass(frozen=True)
class CommandFlags:
    """The flags of the ``cxr`` commands a plan may set, by command and config key, plus a value check and the
    encoder-name check (the CLI passes them, taken from the commands and the model zoo; without them section keys
    and encoder names are not checked)."""

    flags: Mapping[str, Mapping[str, Flag]] = field(default_factory=dict)
    check: Callable[[str, str, Any], None] | None = None
    #: whether a name is a foundation encoder (``cxr_tools.models.encoders.is_encoder``, passed by the CLI: the
    #: benchmark layer does not import models); None accepts every name of an encoder row.
    is_encoder: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class MethodPlan:
    """One row of the table: a method kind with its options per command section."""

    name: str
    kind: str
    options: Mapping[str, tuple[str, ...]]
    backbones: tuple[str, ...]
    train_shots: int | None = None
    match: str | None = None


@dataclass(frozen=True)
class SlurmPlan:
    """sbatch settings of every job (None = the cluster's default)."""

    partition: str | None = None
    time: str | None = None
    gpus: int | None = None
    account: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A checked plan, paths absolute."""

    path: Path
    cache: Path
    output: Path
    meta_split: str
    methods: tuple[MethodPlan, ...]
    shots: tuple[int, ...]
    ways: tuple[int, ...]
    queries: int
    seeds: tuple[int, ...]
    episodes: int
    episode_seed: int
    reference: str
    device: str
    threads: int | None
    slurm: SlurmPlan
    seen_ways: tuple[int, ...] = (0,)
    shapes: tuple[tuple[int, int], ...] = ()

    @property
    def settings(self) -> tuple[tuple[int, int], ...]:
        """Every ``(ways, seen_ways)`` episode shape the plan evaluates, in plan order."""
        return self.shapes or tuple((w, s) for w in self.ways for s in self.seen_ways)

    @property
    def grid(self) -> bool:
        """Whether the plan has several episode shapes or generalized ones: its outputs then name the shape."""
        return len(self.settings) > 1 or any(s for _, s in self.settings)


def load_plan(path: str | Path, commands: CommandFlags | None = None) -> Plan:
    """Read and check plan file ``path``; any problem is one :class:`ConfigError` naming the key and the file."""
    from cxr_tools.config import load_yaml

    path = Path(path)
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise PlanError(exc.message.replace("Config file", "Plan file"), "Check the plan file.") from None
    where = str(path)
    _known(data, _TOP, "", where)
    for key in ("cache", "output", "methods", "shots"):
        if data.get(key) in (None, "", [], {}):
            raise PlanError(f"Plan {where} lacks '{key}'.", "See examples/benchmark/phantoms.yaml.")
    commands = commands or CommandFlags()
    shared = {sec: _section(data.get(sec), sec, SECTIONS[sec], where, commands) for sec in SECTIONS}
    backbones = _names(data.get("backbones", ["conv4"]), "backbones", where)
    methods = data["methods"]
    if not isinstance(methods, Mapping):
        raise PlanError(f"'methods' in {where} must map row names to method settings.", "See the examples.")
    plans = [_method(str(name), spec, shared, backbones, where, commands) for name, spec in methods.items()]
    names = [m.name for m in plans]
    for m in plans:
        if m.match is not None and m.match not in [p.name for p in plans if p.kind in META_KINDS]:
            raise PlanError(
                f"'methods.{m.name}.match' in {where} names no MAML-kind method of the plan: {m.match}.",
                f"Use one of: {', '.join(p.name for p in plans if p.kind in META_KINDS) or '(none)'}.",
            )
    reference = str(data.get("reference") or names[0])
    if reference not in names:
        raise PlanError(
            f"'reference' in {where} is no method of the plan: {reference}.", f"Use one of: {', '.join(names)}."
        )
    seeds_raw = data.get("seeds", list(DEFAULT_SEEDS))
    seeds = (
        tuple(range(_int(seeds_raw, "seeds", where)))
        if isinstance(seeds_raw, int)
        else _ints(seeds_raw, "seeds", where, 0)
    )
    threads = data.get("threads")
    shapes = _shapes(data.get("shapes"), where)
    if shapes and ("ways" in data or "seen_ways" in data):
        raise PlanError(f"Plan {where} gives both 'shapes' and 'ways' / 'seen_ways'.", "Keep one of them.")
    return Plan(
        path=path,
        cache=Path(str(data["cache"])).expanduser().absolute(),
        output=Path(str(data["output"])).expanduser().absolute(),
        meta_split=str(data.get("meta_split") or "auto"),
        methods=tuple(plans),
        shots=_ints(data["shots"], "shots", where, 1),
        ways=tuple(dict.fromkeys(w for w, _ in shapes)) if shapes else _ints(data.get("ways", 2), "ways", where, 1),
        seen_ways=_ints(data.get("seen_ways", 0), "seen_ways", where, 0),
        shapes=shapes,
        queries=_int(data.get("queries", 15), "queries", where),
        seeds=seeds,
        episodes=_int(data.get("episodes", 600), "episodes", where),
        episode_seed=_int(data.get("episode_seed", 0), "episode_seed", where, 0),
        reference=reference,
        device=str(data.get("device") or "auto"),
        threads=None if threads is None else _int(threads, "threads", where),
        slurm=_slurm(data.get("slurm"), where),
    )


def _known(data: Mapping[str, Any], allowed: set[str], prefix: str, where: str) -> None:
    for key in data:
        if str(key) not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'?" if close else f"Valid keys: {', '.join(sorted(allowed))}."
            raise PlanError(f"Unknown key '{prefix}{key}' in {where}.", hint)


def _section(raw: Any, sec: str, command: str, where: str, commands: CommandFlags, prefix: str = "") -> tuple[str, ...]:
    """A command section as command-line arguments, each key checked against the command's own flags."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise PlanError(f"'{prefix}{sec}' in {where} must be a mapping of {command} options.")
    from cxr_tools.config import cli_text

    flags = commands.flags.get(command)
    args: list[str] = []
    for key, value in raw.items():
        name = f"{prefix}{sec}.{key}"
        k = str(key).replace("-", "_")
        if flags is None:
            args += [f"--{k.replace('_', '-')}", cli_text(value)]
            continue
        if k not in flags:
            close = difflib.get_close_matches(k, sorted(flags), n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'?" if close else f"`cxr {command} --help` lists the options."
            raise PlanError(f"Unknown key '{name}' in {where}: `cxr {command}` has no such option.", hint)
        flag = flags[k]
        if flag.on in CONTROLLED[command] or (flag.on == "" and "" in CONTROLLED[command]):
            raise PlanError(
                f"Key '{name}' in {where} is set by the plan itself.",
                "Use the top-level keys (cache, output, shots, ways, seeds...) instead.",
            )
        if commands.check is not None:
            try:
                commands.check(command, k, value)
            except ConfigError as exc:
                raise PlanError(f"Invalid value for '{name}' in {where}: {exc.message}") from None
        args += _as_args(flag, value)
    return tuple(args)


def _as_args(flag: Flag, value: Any) -> list[str]:
    from cxr_tools.config import cli_text

    if flag.is_bool:
        return [flag.on] if value else ([flag.off] if flag.off else [])
    if flag.multiple:
        return [a for v in (value if isinstance(value, (list, tuple)) else [value]) for a in (flag.on, cli_text(v))]
    return [flag.on, cli_text(value)]


def _method(
    name: str,
    spec: Any,
    shared: Mapping[str, tuple[str, ...]],
    backbones: tuple[str, ...],
    where: str,
    commands: CommandFlags,
) -> MethodPlan:
    spec = {} if spec is None else spec
    if not isinstance(spec, Mapping):
        raise PlanError(f"'methods.{name}' in {where} must be a mapping (or empty).", "Write `NAME: {}`.")
    _known(spec, _METHOD, f"methods.{name}.", where)
    kind = str(spec.get("method", name))
    if kind not in METHODS:
        close = difflib.get_close_matches(kind, sorted(METHODS), n=1, cutoff=0.6)
        hint = f"Did you mean '{close[0]}'?" if close else f"Known methods: {', '.join(METHODS)}."
        raise PlanError(f"Unknown method '{kind}' (key 'methods.{name}') in {where}.", hint)
    if "/" in name or name.startswith("."):
        raise PlanError(f"Method name 'methods.{name}' in {where} holds '/' or starts with '.'.", "Rename it.")
    needs = set(METHODS[kind][0]) | {"evaluate"}
    options: dict[str, tuple[str, ...]] = {}
    for sec, command in SECTIONS.items():
        own = _section(spec.get(sec), sec, command, where, commands, f"methods.{name}.")
        if spec.get(sec) is not None and command not in needs:
            raise PlanError(
                f"Key 'methods.{name}.{sec}' in {where}: method {kind} runs no `cxr {command}`.",
                f"Sections for {kind}: {', '.join(s for s, c in SECTIONS.items() if c in needs)}.",
            )
        # a flag given twice: the method's value wins (the last one), the plan's over the kind's defaults
        options[command] = KIND_OPTIONS.get(kind, {}).get(command, ()) + shared[sec] + own
    if kind == "protonet" and "--first-order" in options["meta-train"]:
        raise PlanError(
            f"'first_order' reaches method '{name}' (protonet) in {where}: it is a MAML option.",
            "Set it in the MAML methods' own meta_train sections, or use method fomaml.",
        )
    if spec.get("train_shots") is not None and kind not in EPISODIC_KINDS:
        raise PlanError(
            f"Key 'methods.{name}.train_shots' in {where}: only meta-train kinds (MAML, protonet) train per shot count."
        )
    if spec.get("match") is not None and kind != "scratch":
        raise PlanError(f"Key 'methods.{name}.match' in {where}: only scratch copies another method's budget.")
    own_backbones = spec.get("backbones")
    if kind in ENCODER_KINDS:
        own_backbones = _encoders(own_backbones, name, where, commands.is_encoder)
    return MethodPlan(
        name=name,
        kind=kind,
        options=options,
        backbones=()
        if kind == "pixels"
        else (_names(own_backbones, f"methods.{name}.backbones", where) if own_backbones else backbones),
        train_shots=None
        if spec.get("train_shots") is None
        else _int(spec["train_shots"], f"methods.{name}.train_shots", where),
        match=None if spec.get("match") is None else str(spec["match"]),
    )


def _encoders(raw: Any, name: str, where: str, is_encoder: Callable[[str], bool] | None) -> list[str]:
    """An encoder row's own ``backbones``: foundation encoders only (``hf:PATH`` made absolute, as the cache is)."""
    names = list(_names(raw, f"methods.{name}.backbones", where)) if raw else []
    bad = [b for b in names if is_encoder is not None and not is_encoder(b)]
    if not names or bad:
        raise PlanError(
            f"'methods.{name}.backbones' in {where} must list foundation encoders"
            + (f"; not: {', '.join(bad)}." if bad else "."),
            "Use hf:DIR, hf:ORG/NAME or a preset (`cxr models` lists them), e.g. backbones: [rad-dino].",
        )
    out = []
    for b in names:
        path = b.removeprefix("hf:")
        local = b.startswith("hf:") and (path.startswith((".", "~", "/")) or Path(path).expanduser().exists())
        out.append(f"hf:{Path(path).expanduser().absolute()}" if local else b)
    return out


def _slurm(raw: Any, where: str) -> SlurmPlan:
    if raw is None:
        return SlurmPlan()
    if not isinstance(raw, Mapping):
        raise PlanError(f"'slurm' in {where} must be a mapping.", f"Keys: {', '.join(sorted(_SLURM))}.")
    _known(raw, _SLURM, "slurm.", where)
    extra = raw.get("extra") or ()
    return SlurmPlan(
        partition=None if raw.get("partition") is None else str(raw["partition"]),
        time=None if raw.get("time") is None else str(raw["time"]),
        gpus=None if raw.get("gpus") is None else _int(raw["gpus"], "slurm.gpus", where, 0),
        account=None if raw.get("account") is None else str(raw["account"]),
        cpus_per_task=None
        if raw.get("cpus_per_task") is None
        else _int(raw["cpus_per_task"], "slurm.cpus_per_task", where),
        mem=None if raw.get("mem") is None else str(raw["mem"]),
        extra=tuple(str(x) for x in (extra if isinstance(extra, (list, tuple)) else [extra])),
    )


def _shapes(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    """``shapes``: distinct ``[ways, seen_ways]`` pairs (``ways`` >= 1 new classes, ``seen_ways`` >= 0 known ones)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not value:
        raise PlanError(f"'shapes' in {where} must list [ways, seen_ways] pairs.", "E.g. shapes: [[1, 2], [3, 0]].")
    out = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise PlanError(f"'shapes' in {where}: {item!r} is no [ways, seen_ways] pair.", "E.g. [2, 1].")
        out.append((_int(item[0], "shapes (ways)", where, 1), _int(item[1], "shapes (seen_ways)", where, 0)))
    if len(set(out)) != len(out):
        raise PlanError(f"'shapes' in {where} repeats a pair.", "List each [ways, seen_ways] pair once.")
    return tuple(out)


def _int(value: Any, key: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"'{key}' in {where} must be an integer ≥ {minimum} (got {value!r}).")
    return value


def _ints(value: Any, key: str, where: str, minimum: int) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out = tuple(_int(v, key, where, minimum) for v in items)
    if len(set(out)) != len(out):
        raise PlanError(f"'{key}' in {where} repeats a value: {list(out)}.", "List each value once.")
    return out


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out = tuple(str(v) for v in items if v is not None and str(v))
    if not out or len(set(out)) != len(out):
        raise PlanError(f"'{key}' in {where} must list distinct names (got {value!r}).")
    return out
