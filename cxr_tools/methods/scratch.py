"""The random-initialisation baseline, adapted with the budget of the run it is compared with.

``scratch`` answers "what does the support set alone teach this architecture?": per episode a freshly initialised
network (seeded from the episode's generator) is trained on the support set and scores the queries. The
comparison is fair only if scratch gets the *same adaptation budget* as the method it is compared with — as many
steps, the same learning rate, the same optimiser — so the budget is never a silent default:

* ``--match RUN`` copies the budget ``RUN`` really adapted with: the ``settings`` of its own evaluation
  (``RUN/eval/summary.json``, or the evaluation directory given), so an evaluation-time override (``--steps``,
  ``--lr``, ``--finetune all``, ``--adapt-steps``) is copied too (:func:`evaluation_budget`); without one, what the
  run records (:func:`run_budget`): a MAML run's inner loop (``extra.maml``: ``adapt_steps`` SGD steps of
  ``inner_lr``), a supervised run's fine-tune budget (``extra.finetune``, written by ``cxr train``; a run from
  before that record gets the ``head`` defaults, Adam, 100 steps, 1e-2, said in ``budget_source``). A Siamese run
  adapts without training (prototypes) and has no budget to copy.
* without ``--match``, the evaluated run itself (``cxr evaluate RUN --method scratch``) gives the budget the same
  way; without any run, ``--adapt-steps`` and ``--inner-lr`` must both be given (optimiser SGD, the MAML update).
* ``--adapt-steps`` / ``--inner-lr`` given next to a run override that one value.

SGD runs the MAML inner loop (:func:`cxr_tools.methods.maml.adapt`); Adam runs the fine-tuning loop of
:mod:`cxr_tools.methods.finetune`; both full-batch with BatchNorm frozen (eval mode), so the fit is deterministic
given the seed and queries are scored batch-independently.

**BatchNorm** (docs/science.md, "Batch independence"). A matched run normalises every BatchNorm layer with
statistics of data it was trained on, frozen while it adapts and scores. A random initialisation has no such
statistics: its running mean 0 / variance 1 would leave the network effectively unnormalised, and batch
statistics at query time would make a query's score depend on its batch-mates. So scratch does what the matched
run does with the only data it may see: before adapting, each BatchNorm layer's statistics are set to those of
the support set (one forward pass, :func:`support_statistics`), then frozen for adaptation and query scoring. A
query's score depends on the support set and itself only; ``settings.batchnorm`` records it. GroupNorm backbones
(conv4) have nothing to set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

log = logging.getLogger(__name__)

OPTIMISERS: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class Budget:
    """An adaptation budget: ``steps`` full-batch steps of ``optimiser`` at learning rate ``lr``.

    ``matched_run`` is the run it was copied from (None: given by flags); ``source`` says where the copied values
    came from (its evaluation's settings, its model card, or defaults for a run that records none).
    """

    steps: int
    lr: float
    optimiser: str = "sgd"
    matched_run: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"--adapt-steps must be >= 0 (got {self.steps}).")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise ConfigError(f"--inner-lr must be a finite number >= 0 (got {self.lr}).")
        if self.optimiser not in OPTIMISERS:
            raise ConfigError(f"Unknown optimiser '{self.optimiser}'.", f"Use one of: {', '.join(OPTIMISERS)}.")


def evaluation_budget(settings: Mapping[str, Any] | None) -> tuple[int, float, str] | None:
    """``(steps, lr, optimiser)`` an evaluation adapted with (its ``summary.json`` ``settings``), or None for a
    method that adapts without training (prototypes, logistic baselines)."""
    if not settings:
        return None
    method = settings.get("method")
    if (
        method in ("maml", "scratch")
        and settings.get("adapt_steps") is not None
        and settings.get("inner_lr") is not None
    ):
        return int(settings["adapt_steps"]), float(settings["inner_lr"]), str(settings.get("optimiser") or "sgd")
    if method == "finetune" and settings.get("steps") is not None and settings.get("lr") is not None:
        return int(settings["steps"]), float(settings["lr"]), str(settings.get("optimiser") or "adam")
    return None


def run_budget(meta: Mapping[str, Any]) -> tuple[int, float, str] | None:
    """``(steps, lr, optimiser)`` a run adapts with at evaluation, or None for a run that adapts without training."""
    from cxr_tools.methods.adapters import FINETUNE_DEFAULTS

    extra = dict(meta.get("extra") or {})
    training = str(meta.get("training"))
    if training == "maml" and isinstance(extra.get("maml"), Mapping):
        maml = extra["maml"]
        if maml.get("adapt_steps") is not None and maml.get("inner_lr") is not None:
            return int(maml["adapt_steps"]), float(maml["inner_lr"]), "sgd"
    if training in ("supervised", "finetune"):
        recorded = extra.get("finetune")
        if isinstance(recorded, Mapping) and recorded.get("steps") is not None and recorded.get("lr") is not None:
            return int(recorded["steps"]), float(recorded["lr"]), str(recorded.get("optimiser") or "adam")
        steps, lr = FINETUNE_DEFAULTS["head"]
        return steps, lr, "adam"
    return None


def resolve_budget(
    adapt_steps: int | None,
    inner_lr: float | None,
    run: tuple[str, Mapping[str, Any]] | None = None,
    match: tuple[str, Mapping[str, Any]] | None = None,
    match_settings: Mapping[str, Any] | None = None,
) -> Budget:
    """Scratch's budget: flags > ``match`` (``(path, model.json)``; ``match_settings``, the settings its own
    evaluation recorded, with that evaluation's directory as ``evaluation``, first) > the evaluated ``run``
    (module docstring).

    Raises:
        ConfigError: ``match`` has no budget, or no run and not both flags.
    """
    source = match or run
    base = evaluation_budget(match_settings) if match is not None else None
    origin = None
    if base is not None and match_settings is not None:
        where = match_settings.get("evaluation")
        origin = f"its evaluation's settings ({where})" if where else "its evaluation's settings"
    if base is None and source is not None:
        base = run_budget(source[1])
        origin = _card_origin(source[1])
    if match is not None and base is None:
        raise ConfigError(
            f"--match {match[0]}: a {match[1].get('training')} run adapts without training, so it has no budget "
            "(steps, learning rate, optimiser) to copy.",
            "Match a MAML or supervised run, or give the budget with --adapt-steps and --inner-lr.",
        )
    steps = adapt_steps if adapt_steps is not None else (base[0] if base else None)
    lr = inner_lr if inner_lr is not None else (base[1] if base else None)
    if steps is None or lr is None:
        missing = " and ".join(f for f, v in (("--adapt-steps", steps), ("--inner-lr", lr)) if v is None)
        why = f"the {source[1].get('training')} run {source[0]} has none" if source else "no run to copy it from"
        raise ConfigError(
            f"--method scratch needs an adaptation budget: {missing} not given, and {why}.",
            "Pass --match RUN to copy the budget of the run scratch is compared with, or give both --adapt-steps "
            "and --inner-lr.",
        )
    if base is None or source is None:
        return Budget(int(steps), float(lr))
    if origin and origin.startswith("defaults"):
        log.warning("The budget of %s is %s.", source[0], origin)
    return Budget(int(steps), float(lr), base[2], str(source[0]), origin)


def _card_origin(meta: Mapping[str, Any]) -> str:
    """Where :func:`run_budget` took a run's budget from (said in ``settings.budget_source``)."""
    extra = dict(meta.get("extra") or {})
    if meta.get("training") in ("supervised", "finetune") and not isinstance(extra.get("finetune"), Mapping):
        return "defaults (head: Adam, 100 steps, lr 0.01): the run records no fine-tune settings"
    return "its model card"


class ScratchAdapter:
    """Per ``fit``, ``create_model(architecture, num_classes=ways)`` seeded from the generator, then ``budget``
    (module docstring)."""

    method = "scratch"

    def __init__(
        self,
        architecture: str,
        model_args: Mapping[str, Any],
        ways: int,
        budget: Budget,
        *,
        device: Any = "cpu",
        batch_size: int = 256,
    ) -> None:
        from cxr_tools.methods.maml.config import MamlConfig
        from cxr_tools.methods.maml.norm import batchnorm_layers
        from cxr_tools.models.registry import model_card

        model_card(architecture)  # unknown names fail here, before any episode
        self.architecture = architecture
        self.model_args = {k: v for k, v in dict(model_args).items() if k not in {"num_classes", "weights"}}
        self.ways = ways
        self.budget = budget
        self.maml = MamlConfig(inner_lr=budget.lr, adapt_steps=budget.steps, first_order=True, engine="func")
        self.device = device
        self.batch_size = batch_size
        self.has_batchnorm = bool(batchnorm_layers(self.init_model()))

    def settings(self) -> dict[str, Any]:
        """The budget (and, for a BatchNorm network, its normalisation) as ``summary.json`` records it."""
        b = self.budget
        out: dict[str, Any] = {
            "inner_lr": b.lr,
            "adapt_steps": b.steps,
            "optimiser": b.optimiser,
            "matched_run": b.matched_run,
        }
        if b.source is not None:
            out["budget_source"] = b.source
        if self.has_batchnorm:
            out["batchnorm"] = "support-set statistics, frozen"
        return out

    def init_model(self, generator: torch.Generator | None = None) -> nn.Module:
        """The random initialisation this generator gives (global RNG state is restored afterwards)."""
        import torch

        from cxr_tools.methods.adapters import seed_from
        from cxr_tools.models.registry import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from(generator))
            model = create_model(self.architecture, num_classes=self.ways, **self.model_args)
        return model.to(self.device).eval()

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> Any:
        from cxr_tools.methods.adapters import ModuleScorer, check_support

        check_support(support_y, self.ways)
        model = self.init_model(generator)
        if self.has_batchnorm:
            support_statistics(model, support_x)
        if self.budget.optimiser == "sgd":
            from cxr_tools.methods.maml import adapt

            adapted = adapt(model, support_x, support_y.to(support_x.dtype), self.maml)
            return ModuleScorer(adapted, model, self.batch_size)
        from cxr_tools.methods.finetune import train_full_batch
        from cxr_tools.methods.maml.norm import frozen_batchnorm

        with frozen_batchnorm(model):
            train_full_batch(
                model, model.parameters(), lambda: model(support_x), support_y, self.budget.steps, self.budget.lr
            )
        return ModuleScorer(model, model, self.batch_size)


def support_statistics(model: nn.Module, support_x: Tensor) -> None:
    """Set every BatchNorm layer's running mean and variance to the support set's (one full-batch forward pass,
    exact averages), then leave the model in eval mode: the statistics stay frozen through adaptation and query
    scoring, so each query is normalised with support statistics, never with its batch-mates'."""
    import torch

    from cxr_tools.methods.maml.norm import batchnorm_layers

    layers = [m for _, m in batchnorm_layers(model)]
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
            m.train(True)
        with torch.no_grad():
            model(support_x)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
            m.train(False)
