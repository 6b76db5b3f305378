"""Few-shot adaptation behind one interface: ``Adapter.fit(support) -> Scorer``, ``Scorer.predict(x) -> probs``.

Every method that ``cxr evaluate`` compares (and that ``cxr predict --support`` / ``cxr similarity`` reuse) turns a
labelled support set into something that scores new images:

========== ================================================================ ================================
method     what ``fit`` does                                                module
========== ================================================================ ================================
maml       MAML inner loop from the run's meta-learned weights (its inner    :mod:`cxr_tools.methods.maml`
           lr / steps), Finn et al. 2017
prototype  per class, a positive and a negative prototype of the support     :mod:`.prototypes`
           embeddings; softmax over negative distances (Snell et al. 2017);
           a protonet run: its trained ProtoNet-ML rule (MetaChest)          :mod:`.protonet`
finetune   a fresh ``ways``-output head (``head``) or the whole network      :mod:`.finetune`
           (``all``) trained on the support set with BCE-with-logits
scratch    the same architecture randomly initialised (seeded per episode),  :mod:`.scratch`
           adapted with the budget of the run it is compared with
           (``--match RUN``: same steps, lr and optimiser; BatchNorm on
           support-set statistics, frozen)
pixels     per class, a logistic regression on the support set's pixels     :mod:`.logistic`
           (standardised with support statistics); no run needed
linear-    the same logistic regression on a run's frozen features          :mod:`.logistic`
probe      (Siamese embedding, else the backbone before the head)
========== ================================================================ ================================

Conventions shared by every method:

* ``support_x`` / ``x`` are image tensors ``[n, 1, H, W]`` already in the model's input range
  (:func:`~cxr_tools.models.inputs.to_model_input` does that from cache ``uint8`` images) on the model's device;
  ``support_y`` is ``[n, ways]`` multi-hot (NaN = unknown, ignored).
* ``Scorer.predict(x)`` returns float32 probabilities ``[n, ways]`` on the CPU, one independent sigmoid-like
  score per class (findings are not mutually exclusive). Scoring runs in eval mode with BatchNorm on its
  running statistics and without gradients, so **a query's score never depends on the other images in its
  batch** (docs/science.md; tested for every method).
* ``Scorer.support_scores(support_x, support_y)`` returns the support set's own scores *after* adaptation,
  computed exactly as query scores are (eval mode, batch-independent): what ``--threshold support`` chooses its
  threshold on (:mod:`cxr_tools.eval.thresholds`). Prototypes score each support image leave-one-out;
  the logistic baselines cross-validate on the support (``settings.support_scores`` says which).
* Randomness (a fresh head, a scratch initialisation) comes only from the ``torch.Generator`` given to ``fit``;
  ``None`` means a fixed seed 0, so ``fit`` is deterministic either way. The model passed to an adapter is never
  modified.

Example (few-shot use of a finished run, e.g. at ``cxr predict --support``)::

    model, meta = load_model_dir("runs/maml")
    adapter = build_adapter(model, meta, ways=2)                 # method "auto" follows meta["training"]
    scorer = adapter.fit(to_model_input(support_u8, meta), support_targets)
    probs = scorer.predict(to_model_input(query_u8, meta))       # [n, 2]
    support_probs = scorer.support_scores(support_x, support_targets)  # [n_support, 2], for thresholds
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cxr_tools.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from cxr_tools.methods.maml.config import MamlConfig

#: The adaptation methods, in the order tables list them.
METHODS: tuple[str, ...] = ("maml", "prototype", "finetune", "scratch", "pixels", "linear-probe")
#: Methods that need no trained run (``scratch`` builds its network, ``pixels`` has none).
RUNLESS_METHODS: tuple[str, ...] = ("scratch", "pixels")
#: Methods that evaluate a pretrained foundation encoder without a run (``--backbone hf:...`` or a preset).
ENCODER_METHODS: tuple[str, ...] = ("linear-probe", "prototype", "finetune")
#: The method ``auto`` picks for each training kind of ``model.json``.
AUTO_METHOD: dict[str, str] = {
    "maml": "maml",
    "protonet": "prototype",
    "siamese": "prototype",
    "supervised": "finetune",
    "finetune": "finetune",
    "scratch": "scratch",
}
FINETUNE_MODES: tuple[str, ...] = ("head", "all")
#: ``settings.support_scores`` of a method whose support scores come from the model adapted on those images.
IN_SAMPLE = "in-sample (the model adapted on these images: optimistic)"
#: Fine-tuning defaults per mode: (steps, Adam learning rate). A linear head on fixed features converges in a
#: hundred full-batch steps at 1e-2; the whole network needs a smaller step so a 10-image support set does not
#: wreck the pre-trained features.
FINETUNE_DEFAULTS: dict[str, tuple[int, float]] = {"head": (100, 1e-2), "all": (50, 1e-3)}
#: Default MAML budget of ``--method maml`` on a run that records none (the meta-train defaults).
DEFAULT_INNER_LR = 0.01
DEFAULT_ADAPT_STEPS = 5


class Scorer(Protocol):
    """What ``Adapter.fit`` returns: scores images for the support set's classes."""

    def predict(self, x: Tensor) -> Tensor:
        """Probabilities float32 ``[n, ways]`` (CPU) of images ``[n, 1, H, W]`` in the model's input range."""

    def support_scores(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        """The adapted support set's probabilities ``[n, ways]``, scored as queries are (see the module doc)."""


class _Predicts(Protocol):
    def predict(self, x: Tensor) -> Tensor: ...


class Adapter(Protocol):
    """A few-shot method ready to adapt to support sets (one instance serves many episodes)."""

    method: str

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> Scorer:
        """Adapt to ``support_x`` ``[n, 1, H, W]`` with targets ``support_y`` ``[n, ways]``."""


@dataclass(frozen=True)
class AdaptConfig:
    """How to adapt; ``None`` fields take the run's value (MAML settings) or the method's default.

    Attributes:
        method: ``auto`` (from the run's training kind, :data:`AUTO_METHOD`) or one of :data:`METHODS`.
        finetune: ``head`` (train a fresh head on fixed features) or ``all`` (the whole network).
        steps, lr: fine-tuning steps and Adam learning rate (default :data:`FINETUNE_DEFAULTS`).
        inner_lr, adapt_steps: MAML inner-loop SGD (default: the MAML run's, else 0.01 and 5); scratch's budget
            (default: the run's, see :func:`~cxr_tools.methods.scratch.resolve_budget`; no default without one).
        temperature: prototype softmax temperature (calibration only: AUC and decisions at 0.5 do not change).
        batch_size: images per forward pass when scoring (results do not depend on it).
    """

    method: str = "auto"
    finetune: str = "head"
    steps: int | None = None
    lr: float | None = None
    inner_lr: float | None = None
    adapt_steps: int | None = None
    temperature: float = 0.1
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.method != "auto" and self.method not in METHODS:
            raise ConfigError(f"Unknown method '{self.method}'.", f"Use auto or one of: {', '.join(METHODS)}.")
        if self.finetune not in FINETUNE_MODES:
            raise ConfigError(f"Unknown --finetune '{self.finetune}'.", "Use head or all.")
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"--steps must be >= 0 (got {self.steps}).")
        if self.adapt_steps is not None and self.adapt_steps < 0:
            raise ConfigError(f"--adapt-steps must be >= 0 (got {self.adapt_steps}).")
        for name in ("lr", "inner_lr"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0 (got {value}).")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (got {self.temperature}).")
        if self.batch_size < 1:
            raise ConfigError(f"The scoring batch size must be >= 1 (got {self.batch_size}).")


def resolve_method(method: str, training: str | None) -> str:
    """The concrete method: ``auto`` follows the training kind (:data:`AUTO_METHOD`); ``None`` = no run."""
    if method != "auto":
        if method not in METHODS:
            raise ConfigError(f"Unknown method '{method}'.", f"Use auto or one of: {', '.join(METHODS)}.")
        return method
    if training is None:
        raise ConfigError("--method auto needs a run to follow.", "Pass a run directory, or --method scratch|pixels.")
    if training not in AUTO_METHOD:
        raise ConfigError(f"No default method for training kind '{training}'.", f"Pass --method {'|'.join(METHODS)}.")
    return AUTO_METHOD[training]


def maml_settings(meta: Mapping[str, Any] | None, config: AdaptConfig) -> MamlConfig:
    """The inner loop for ``maml``: flags > the MAML run's ``extra.maml`` > defaults."""
    from cxr_tools.methods.maml.config import MamlConfig

    run = dict(((meta or {}).get("extra") or {}).get("maml") or {})
    inner_lr = config.inner_lr if config.inner_lr is not None else run.get("inner_lr", DEFAULT_INNER_LR)
    steps = config.adapt_steps if config.adapt_steps is not None else run.get("adapt_steps", DEFAULT_ADAPT_STEPS)
    return MamlConfig(inner_lr=float(inner_lr), adapt_steps=int(steps), first_order=True, engine="func")


def finetune_settings(config: AdaptConfig, meta: Mapping[str, Any] | None = None) -> tuple[int, float]:
    """``(steps, lr)`` of fine-tuning: the flags, else the budget the run recorded for this mode (``cxr train``
    writes ``extra.finetune``), else :data:`FINETUNE_DEFAULTS` of the mode."""
    steps, lr = FINETUNE_DEFAULTS[config.finetune]
    recorded = ((meta or {}).get("extra") or {}).get("finetune")
    if isinstance(recorded, Mapping) and recorded.get("mode", "head") == config.finetune:
        steps = int(recorded.get("steps", steps))
        lr = float(recorded.get("lr", lr))
    return (config.steps if config.steps is not None else steps, config.lr if config.lr is not None else lr)


def finetune_record(mode: str = "head") -> dict[str, Any]:
    """The fine-tune budget ``cxr evaluate`` gives a supervised run by default, as ``cxr train`` records it in
    ``model.json`` (``extra.finetune``), so ``--match`` copies what the run's evaluation really used."""
    steps, lr = FINETUNE_DEFAULTS[mode]
    return {"mode": mode, "steps": steps, "lr": lr, "optimiser": "adam"}


def seed_from(generator: torch.Generator | None) -> int:
    """A 62-bit integer drawn from ``generator`` (a fixed 0 without one)."""
    import torch

    if generator is None:
        return 0
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def fresh_linear(in_features: int, out_features: int, generator: torch.Generator | None, device: Any) -> nn.Linear:
    """``nn.Linear`` initialised as PyTorch does (uniform ±1/√fan_in for weight and bias), from ``generator``."""
    import torch
    from torch import nn

    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    layer = nn.Linear(in_features, out_features)
    bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
    return layer.to(device)


def model_device(model: nn.Module) -> torch.device:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def with_fresh_head(model: nn.Module, ways: int, generator: torch.Generator | None) -> nn.Module:
    """A copy of ``model`` whose head is a fresh ``ways``-output linear layer (from ``generator``), in eval mode."""
    if not hasattr(model, "forward_features") or not hasattr(model, "num_features"):
        raise ModelError(f"{type(model).__name__} has no forward_features(); use a zoo model (cxr models).")
    clone: Any = copy.deepcopy(model)
    clone.head = fresh_linear(int(clone.num_features), ways, generator, model_device(model))
    clone.num_classes = ways
    return clone.eval()


class SupportAsQueries:
    """``support_scores``: the support images scored by ``predict``, like any query (eval mode, no batch
    effects). The scores are in-sample (the model adapted on these images), hence optimistic (docs/science.md)."""

    def support_scores(self: _Predicts, support_x: Tensor, support_y: Tensor) -> Tensor:
        return self.predict(support_x)


class ModuleScorer(SupportAsQueries):
    """Scores with ``sigmoid(fn(x))`` in eval mode, in chunks, without gradients."""

    def __init__(self, fn: Any, module: nn.Module, batch_size: int) -> None:
        self.fn = fn
        self.module = module
        self.batch_size = batch_size

    def predict(self, x: Tensor) -> Tensor:
        return predict_in_chunks(lambda chunk: self.fn(chunk), self.module, x, self.batch_size)


def predict_in_chunks(logits_fn: Any, module: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``sigmoid(logits_fn(x))`` as float32 on the CPU, ``batch_size`` images at a time, in eval mode."""
    import torch

    return outputs_in_chunks(lambda chunk: torch.sigmoid(logits_fn(chunk).float()), module, x, batch_size)


def outputs_in_chunks(fn: Any, module: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``fn(x)`` (scores, embeddings) as float32 on the CPU, ``batch_size`` images at a time, with ``module`` in
    eval mode, BatchNorm on its running statistics and no gradients: each row depends on its own image only."""
    import torch

    from cxr_tools.methods.maml.norm import frozen_batchnorm

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), frozen_batchnorm(module):
            parts = [fn(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    finally:
        module.train(was_training)
    if not parts:
        raise ModelError("Nothing to score: the image batch is empty.")
    return torch.cat(parts).cpu()


class MamlAdapter:
    """MAML adaptation (Finn, Abbeel & Levine 2017): ``adapt_steps`` SGD steps of ``inner_lr`` on the support
    BCE loss from the model's weights, via :func:`cxr_tools.methods.maml.adapt` (BatchNorm frozen).

    A MAML run's head has one output per episode slot (``ways``); another run's model gets a fresh
    ``ways``-output head drawn from the ``fit`` generator first.
    """

    method = "maml"

    def __init__(self, model: nn.Module, ways: int, maml: MamlConfig, *, batch_size: int = 256) -> None:
        self.model = model.eval()
        self.ways = ways
        self.maml = maml
        self.batch_size = batch_size
        self._needs_head = int(getattr(model, "num_classes", ways)) != ways

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> Scorer:
        from cxr_tools.methods.maml import adapt

        check_support(support_y, self.ways)
        model = with_fresh_head(self.model, self.ways, generator) if self._needs_head else self.model
        adapted = adapt(model, support_x, support_y.to(support_x.dtype), self.maml)
        return ModuleScorer(adapted, model, self.batch_size)


def check_support(support_y: Tensor, ways: int) -> None:
    """Refuse a support set whose targets are not ``[n, ways]`` or that lacks a positive for some class."""
    import torch

    if support_y.ndim != 2 or support_y.shape[1] != ways:
        raise ModelError(f"Support targets have shape {tuple(support_y.shape)}; expected [n, {ways}].")
    positives = torch.nan_to_num(support_y.float(), nan=0.0).sum(dim=0)
    empty = [str(j) for j in range(ways) if float(positives[j]) == 0]
    if empty:
        raise ModelError(
            f"The support set has no positive image for class column(s) {', '.join(empty)}.",
            "Give at least one positive example of every class.",
        )


def build_adapter(
    model: nn.Module | None,
    meta: Mapping[str, Any] | None,
    ways: int,
    config: AdaptConfig | None = None,
    *,
    backbone: str | None = None,
    device: Any = None,
    match: tuple[str, Mapping[str, Any]] | None = None,
    match_settings: Mapping[str, Any] | None = None,
) -> Adapter:
    """The adapter for ``config.method`` on ``model`` (loaded with :func:`~cxr_tools.models.load_model_dir`).

    Args:
        model: the run's model, or None for ``scratch`` / ``pixels`` without a run.
        meta: the run's ``model.json`` (training kind, MAML settings, Siamese distance), or None.
        ways: number of classes the support sets have.
        config: method and its settings (default: ``auto``).
        backbone: architecture for ``scratch`` without a run (default: the matched run's, else ``conv4``).
        device: where to adapt (default: the model's device, else CPU).
        match: ``(path, model.json)`` of the run whose adaptation budget ``scratch`` copies (``--match``).
        match_settings: the ``settings`` its own evaluation recorded (its real budget, overrides included).
    """
    from cxr_tools.methods.finetune import FinetuneAdapter
    from cxr_tools.methods.logistic import linear_probe_adapter, pixels_adapter
    from cxr_tools.methods.prototypes import PrototypeAdapter, embedding_function

    config = config or AdaptConfig()
    if ways < 1:
        raise ConfigError(f"ways must be at least 1 (got {ways}).")
    training = str(meta.get("training")) if meta is not None else None
    method = resolve_method(config.method, training)
    if match is not None and method != "scratch":
        raise ConfigError(f"--match applies to --method scratch, not {method}.", "Drop --match.")
    if device is None:
        device = model_device(model) if model is not None else "cpu"
    if method == "scratch":
        return _scratch_adapter(model, meta, ways, config, backbone, device, match, match_settings)
    if method == "pixels":
        return pixels_adapter(ways)
    if model is None or meta is None:
        raise ConfigError(
            f"--method {method} needs a trained run.", "Pass a run directory, or use --method scratch or pixels."
        )
    model = model.to(device).eval()
    if method == "maml":
        if training == "maml":
            run_ways = int(getattr(model, "num_classes", ways))
            if run_ways != ways:
                raise ModelError(
                    f"The MAML run was meta-trained with --ways {run_ways}; its head has {run_ways} episode slots.",
                    f"Evaluate with {run_ways} classes per episode (--ways, plus --seen-ways for generalized "
                    f"episodes), or meta-train with --ways {ways}.",
                )
        return MamlAdapter(model, ways, maml_settings(meta, config), batch_size=config.batch_size)
    if method == "prototype":
        embed, distance = embedding_function(model, meta)
        rule = "mean-distance" if training == "protonet" else "pos-neg"
        t, n = config.temperature, config.batch_size
        return PrototypeAdapter(embed, model, ways, distance=distance, temperature=t, batch_size=n, rule=rule)
    if method == "linear-probe":
        return linear_probe_adapter(model, meta, ways, batch_size=config.batch_size)
    steps, lr = finetune_settings(config, meta)
    known = [str(c) for c in meta.get("labels") or ()]  # the trained head's classes (generalized episodes)
    return FinetuneAdapter(
        model, ways, mode=config.finetune, steps=steps, lr=lr, batch_size=config.batch_size, known=known
    )


def _scratch_adapter(
    model: nn.Module | None,
    meta: Mapping[str, Any] | None,
    ways: int,
    config: AdaptConfig,
    backbone: str | None,
    device: Any,
    match: tuple[str, Mapping[str, Any]] | None,
    match_settings: Mapping[str, Any] | None = None,
) -> Adapter:
    """Scratch on the run's architecture (else the matched run's, else ``backbone``) with its resolved budget."""
    from cxr_tools.methods.scratch import ScratchAdapter, resolve_budget

    run = None
    if model is not None and meta is not None:
        arch, args = str(meta.get("architecture")), dict(meta.get("model_args") or {})
        run = (_run_dir(str(meta["path"])) if meta.get("path") else "the evaluated run", meta)
    elif match is not None and backbone in (None, match[1].get("architecture")):
        arch, args = str(match[1].get("architecture")), dict(match[1].get("model_args") or {})
    else:
        arch, args = backbone or "conv4", {}
    budget = resolve_budget(config.adapt_steps, config.inner_lr, run=run, match=match, match_settings=match_settings)
    return ScratchAdapter(arch, args, ways, budget, device=device, batch_size=config.batch_size)


def _run_dir(model_folder: str) -> str:
    """The run directory of a model folder (``RUN/model`` -> ``RUN``)."""
    from pathlib import Path

    path = Path(model_folder)
    return str(path.parent if path.name == "model" else path)


def describe(adapter: Adapter) -> dict[str, Any]:
    """The settings of an adapter as a JSON-able dict (recorded in ``summary.json``): method, budget, options, and
    how its support images are scored for ``--threshold support`` (``support_scores``: in-sample unless the
    method says otherwise)."""
    out: dict[str, Any] = {"method": adapter.method}
    maml = getattr(adapter, "maml", None)
    if maml is not None:
        out.update(inner_lr=maml.inner_lr, adapt_steps=maml.adapt_steps, optimiser="sgd")
    for key in ("architecture", "mode", "steps", "lr", "distance", "temperature"):
        if hasattr(adapter, key):
            out[key] = getattr(adapter, key)
    if getattr(adapter, "rule", "pos-neg") != "pos-neg":  # a protonet run's trained rule (methods/protonet.py)
        out["rule"] = adapter.rule  # type: ignore[attr-defined]
    if adapter.method == "finetune":
        out["optimiser"] = "adam"
    settings = getattr(adapter, "settings", None)
    if callable(settings):
        out.update(settings())
    out["support_scores"] = getattr(adapter, "support_scoring", IN_SAMPLE)
    return out
