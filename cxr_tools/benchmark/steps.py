"""A plan expanded into steps: one ``cxr`` command line each, with its output directory and dependencies.

Training is shared wherever the method allows: a supervised or Siamese run is shot-free, so one run per
(backbone, seed, options) serves every shot count and every method that asks for the same training (``fine-tune``
and ``linear-probe`` share their supervised run, ``siamese-prototype`` and ``maml-from-siamese`` their Siamese
run); MAML kinds meta-train per shot count unless the method sets ``train_shots``. Evaluations run per shot count
and training seed, all with the plan's ``episode_seed``, so every evaluation of one shot count sees the same
episode list and ``cxr compare`` pairs them (and groups a method's seeds: their interval includes the
between-seed variance). ``pixels`` and ``scratch`` train nothing, so they are evaluated once per shot count.
One ``cxr compare`` per shot count, against the plan's reference, closes the plan.

A plan with several episode shapes (a list of ``ways``, or ``seen_ways``: the MetaChest grid) evaluates every
shape at every shot count; its columns are named ``Wway-Kshot`` (``Wway-Sseen-Kshot`` for generalized episodes,
compared on ``auc-harmonic``), and a MAML kind meta-trains per shot count and episode size (``ways + seen_ways``
slots). A plan with one standard shape keeps the plain ``Kshot`` names.

Output layout under the plan's ``output``: ``runs/NAME``, ``evaluations/COLUMN/METHOD/seedS``,
``compare/COLUMN`` (``COLUMN`` = ``Kshot``, or the shape-qualified name above), and ``.benchmark/`` (step states
and logs, :mod:`~cxr_tools.benchmark.state`).

A step's *fingerprint* hashes its command line (without bookkeeping: device, threads) and its dependencies'
fingerprints, so a changed setting redoes the step and everything downstream of it, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from cxr_tools.benchmark.plan import ENCODER_KINDS, META_KINDS, METHODS, MethodPlan, Plan, PlanError

#: Flags whose value does not change a step's result (their change never redoes a step).
BOOKKEEPING = frozenset({"--device", "--threads"})
_RUN_NAMES = {"train": "supervised", "train-siamese": "siamese"}


@dataclass(frozen=True)
class Step:
    """One command line of the plan."""

    id: str
    command: str
    args: tuple[str, ...]
    output: Path
    deps: tuple[str, ...] = ()
    method: str | None = None
    shots: int | None = None
    seed: int | None = None
    fingerprint: str = ""
    column: str | None = None  # the report column (evaluations and compare): ``Kshot`` or ``Wway-Sseen-Kshot``
    ways: int | None = None
    seen_ways: int = 0


def column_name(plan: Plan, ways: int, seen_ways: int, shots: int) -> str:
    """The name of one (episode shape, shot count) column: ``Kshot`` unless the plan is a grid (module doc)."""
    if not plan.grid:
        return f"{shots}shot"
    return f"{ways}way" + (f"-{seen_ways}seen" if seen_ways else "") + f"-{shots}shot"


def expand(plan: Plan) -> list[Step]:
    """Every step of ``plan`` in an order that runs each after its dependencies (training, evaluations, compare)."""
    builder = _Builder(plan)
    columns = [(w, sw, k) for w, sw in plan.settings for k in plan.shots]
    evals: dict[tuple[int, int, int], dict[str, list[Step]]] = {c: {} for c in columns}
    for method in plan.methods:
        for backbone in method.backbones or (None,):
            label = method.name if len(method.backbones) <= 1 else f"{method.name}-{_label_part(str(backbone))}"
            trains = bool(METHODS[method.kind][0])
            for w, sw, k in columns:
                for seed in plan.seeds if trains else (None,):
                    step = builder.evaluation(method, label, backbone, k, seed, (w, sw))
                    evals[w, sw, k].setdefault(label, []).append(step)
    for w, sw, k in columns:
        builder.compare(k, evals[w, sw, k], (w, sw))
    return builder.finish()


def _label_part(backbone: str) -> str:
    """A backbone as part of a row label and folder name: an ``hf:`` folder or repo id by its last part."""
    return Path(backbone.removeprefix("hf:")).name if "/" in backbone else backbone.removeprefix("hf:")


def command_line(step: Step, mode: str, requeue: bool = False) -> list[str]:
    """The arguments after ``cxr`` that run ``step``: ``mode`` ``resume`` continues an interrupted output with the
    command's own resume, ``overwrite`` replaces what an earlier version of the step wrote; ``requeue`` (training
    under SLURM) makes a preempted command requeue its job."""
    flag = {"resume": [] if step.command == "compare" else ["--resume"], "overwrite": ["--overwrite"]}[mode]
    return [step.command, *step.args, *flag, *(["--requeue"] if requeue else [])]


class _Builder:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.steps: dict[str, Step] = {}
        self.variants: dict[tuple[str, tuple[str, ...]], str] = {}

    def finish(self) -> list[Step]:
        done: dict[str, Step] = {}
        for step in self.steps.values():  # insertion order is a dependency order
            payload = [
                step.command,
                _significant(step.args),
                str(step.output),
                sorted(done[d].fingerprint for d in step.deps),
            ]
            digest = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
            done[step.id] = replace(step, fingerprint=digest)
        return list(done.values())

    def _add(self, step: Step) -> Step:
        return self.steps.setdefault(step.id, step)

    def _common(self, seed: int | None) -> list[str]:
        p = self.plan
        out = ["--device", p.device, *(["--threads", str(p.threads)] if p.threads else [])]
        return out + (["--seed", str(seed)] if seed is not None else [])

    def _variant(self, base: str, key: tuple[str, ...], method: MethodPlan) -> str:
        """``base`` for the first option set of a training kind, ``base-METHOD`` for another one."""
        taken = set(self.variants.values())
        return self.variants.setdefault((base, key), base if base not in taken else f"{base}-{method.name}")

    def training(
        self,
        command: str,
        method: MethodPlan,
        backbone: str,
        seed: int,
        shots: int | None,
        init: Step | None = None,
        ways: int | None = None,
    ) -> Step:
        p = self.plan
        options = method.options[command]
        split = [] if p.meta_split == "auto" else ["--meta-split", p.meta_split]
        ways = p.ways[0] if ways is None else ways
        if command == "meta-train":
            base = method.kind
            arch = ["--init", str(init.output)] if init is not None else ["--backbone", backbone]
            args = [str(p.cache), "--ways", str(ways), "--shots", str(shots), "--queries", str(p.queries), *arch]
            args += {"fomaml": ["--first-order"], "protonet": ["--algorithm", "protonet"]}.get(method.kind, [])
        else:
            base = _RUN_NAMES[command]
            arch = ["--model" if command == "train" else "--backbone", backbone]
            args = [str(p.cache), *arch, "--classes", "base"]
        init_variant = init.id.split("/", 1)[1].rsplit("-seed", 1)[0] if init is not None else ""
        variant = self._variant(base, (*options, init_variant), method)
        size = f"-{ways}way" if command == "meta-train" and p.grid else ""  # a MAML head has one slot per class
        name = f"{variant}-{backbone}{size}" + (f"-{shots}shot" if shots is not None else "") + f"-seed{seed}"
        output = p.output / "runs" / name
        args += [*split, *self._common(seed), *options, "--output", str(output)]
        deps = (init.id,) if init is not None else ()
        return self._add(Step(f"{command}/{name}", command, tuple(args), output, deps, method.name, shots, seed))

    def run_for(self, method: MethodPlan, backbone: str, shots: int, seed: int, ways: int) -> Step:
        """The training step whose run ``method`` evaluates (creating its chain); ``ways``: classes per episode."""
        commands = METHODS[method.kind][0]
        if commands[-1] != "meta-train":
            return self.training(commands[-1], method, backbone, seed, None)
        init = self.training("train-siamese", method, backbone, seed, None) if "train-siamese" in commands else None
        return self.training("meta-train", method, backbone, seed, method.train_shots or shots, init, ways)

    def evaluation(
        self,
        method: MethodPlan,
        label: str,
        backbone: str | None,
        shots: int,
        seed: int | None,
        setting: tuple[int, int] | None = None,
    ) -> Step:
        p = self.plan
        ways, seen_ways = setting or p.settings[0]
        eval_method = METHODS[method.kind][1]
        run: Step | None = None
        head: list[str] = []
        if seed is not None and backbone is not None:
            run = self.run_for(method, backbone, shots, seed, ways + seen_ways)
            head = [str(run.output)]
        elif method.kind in ENCODER_KINDS:  # a pretrained encoder: evaluated on its own, nothing trained
            head = ["--backbone", str(backbone)]
        elif method.kind == "scratch":
            head = ["--backbone", str(backbone)]
            if method.match is not None:  # its first seed's evaluation: the budget it used, overrides included
                run = self._matched(method.match, str(backbone), shots, (ways, seen_ways))
                head += ["--match", str(run.output)]
        split = [] if p.meta_split == "auto" else ["--meta-split", p.meta_split]
        args = [
            *head,
            "--data",
            str(p.cache),
            "--method",
            eval_method,
            "--ways",
            str(ways),
            *(["--seen-ways", str(seen_ways)] if seen_ways else []),
            "--shots",
            str(shots),
            "--queries",
            str(p.queries),
            "--episodes",
            str(p.episodes),
            *split,
            "--device",
            p.device,
            *(["--threads", str(p.threads)] if p.threads else []),
            "--seed",
            str(p.episode_seed),
            *method.options["evaluate"],
        ]
        column = column_name(p, ways, seen_ways, shots)
        where = p.output / "evaluations" / column / label
        output = where / f"seed{seed}" if seed is not None else where
        step_id = f"evaluate/{column}/{label}" + (f"/seed{seed}" if seed is not None else "")
        deps = (run.id,) if run is not None else ()
        args = (*args, "--output", str(output))
        return self._add(
            Step(
                step_id,
                "evaluate",
                args,
                output,
                deps,
                label,
                shots,
                seed,
                column=column,
                ways=ways,
                seen_ways=seen_ways,
            )
        )

    def _matched(self, name: str, backbone: str, shots: int, setting: tuple[int, int]) -> Step:
        """The evaluation step of ``name``'s first seed at ``shots``: ``--match`` reads its settings (the budget
        it adapted with, evaluation options included) and its run."""
        method = next(m for m in self.plan.methods if m.name == name and m.kind in META_KINDS)
        if backbone not in method.backbones:
            raise PlanError(
                f"scratch matches {name}, which has no {backbone} backbone.", "Give both the same backbones."
            )
        label = method.name if len(method.backbones) <= 1 else f"{method.name}-{backbone}"
        return self.evaluation(method, label, backbone, shots, self.plan.seeds[0], setting)

    def compare(self, shots: int, evals: dict[str, list[Step]], setting: tuple[int, int]) -> Step:
        p = self.plan
        ways, seen_ways = setting
        column = column_name(p, ways, seen_ways, shots)
        metric = "auc-harmonic" if seen_ways else "auc"  # generalized: seen and unseen classes both count
        ref_label = next(label for label in evals if label == p.reference or label.startswith(f"{p.reference}-"))
        args: list[str] = [str(s.output) for steps in evals.values() for s in steps]
        for label, steps in evals.items():
            if len(steps) > 1:
                args += ["--group", f"{label}=" + ",".join(str(s.output) for s in steps)]
        ref = evals[ref_label]
        args += [
            "--metric",
            metric,
            "--no-auto-group",
            "--reference",
            ref_label if len(ref) > 1 else str(ref[0].output),
        ]
        output = p.output / "compare" / column
        deps = tuple(s.id for steps in evals.values() for s in steps)
        return self._add(
            Step(
                f"compare/{column}",
                "compare",
                (*args, "--output", str(output)),
                output,
                deps,
                shots=shots,
                column=column,
                ways=ways,
                seen_ways=seen_ways,
            )
        )


def _significant(args: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in BOOKKEEPING:
            skip = True
        else:
            out.append(a)
    return out
