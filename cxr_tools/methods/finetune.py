"""Fine-tuning baseline: a fresh ``ways``-output head (and optionally the whole network) trained on the support set.

The "pre-train on base classes, then fine-tune on the few novel examples" baseline that few-shot papers must
beat (Chen et al. 2019, "A Closer Look at Few-shot Classification", ICLR: *Baseline* = a new linear head on
frozen features, *Baseline++*-style variants fine-tune more), and the seeds' "fine-tuned ResNet".

* ``mode="head"``: the backbone is frozen; support features are computed once and a new linear head is trained
  on them (logistic regression per class, full batch).
* ``mode="all"``: a copy of the whole network with the new head is trained; the run's model is never touched.

**Generalized episodes** (``cxr evaluate --seen-ways``; docs/science.md): the classes a supervised run was trained
on keep their trained head rows, frozen (:meth:`FinetuneAdapter.with_seen`). Only the fresh rows of the unseen
classes (and, with ``all``, the backbone) learn from the support set, on the unseen columns' loss; a seen class is
scored by its trained row on the (adapted) features, so with ``head`` its score is exactly the trained head's
output and with ``all`` what fine-tuning did to the features shows as forgetting.

Both use BCE-with-logits over the multi-hot targets (findings are not mutually exclusive; NaN targets are
masked), Adam with a fixed number of full-batch steps and a fixed learning rate, so every episode gets exactly
the same budget. The network stays in **eval mode throughout** — BatchNorm normalises with its running
statistics and never updates them, dropout is off — so training is deterministic given the head's seed and a
query's score does not depend on its batch-mates.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.methods.adapters import (
    SupportAsQueries,
    check_support,
    fresh_linear,
    model_device,
    predict_in_chunks,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class FinetuneAdapter:
    """Fine-tune on each support set (module docstring).

    Args:
        model: a zoo model (``forward_features`` + ``head``); left unchanged.
        ways: outputs of the new head.
        mode: ``head`` or ``all``.
        steps: full-batch Adam steps per support set.
        lr: Adam learning rate.
        batch_size: images per forward pass when computing features / scoring.
        known: the classes of the run's trained head, in row order (``model.json`` ``labels``): what
            :meth:`with_seen` can score from the run's knowledge.
    """

    method = "finetune"

    def __init__(
        self,
        model: nn.Module,
        ways: int,
        *,
        mode: str = "head",
        steps: int = 100,
        lr: float = 1e-2,
        batch_size: int = 256,
        known: Sequence[str] = (),
    ) -> None:
        if mode not in ("head", "all"):
            raise ConfigError(f"Unknown fine-tune mode '{mode}'.", "Use head or all.")
        if not hasattr(model, "forward_features") or not hasattr(model, "num_features"):
            raise ModelError(f"{type(model).__name__} has no forward_features(); fine-tuning needs a zoo model.")
        self.model = model.eval()
        self.ways = ways
        self.mode = mode
        self.steps = int(steps)
        self.lr = float(lr)
        self.batch_size = batch_size
        self.known = tuple(known)
        self.seen_rows: tuple[int, ...] = ()

    def with_seen(self, seen: Sequence[str]) -> FinetuneAdapter:
        """This adapter for a generalized episode whose last ``len(seen)`` classes are ``seen``: they keep the
        run's trained head rows (module docstring). A model without named head classes (a foundation encoder) knows
        none: its seen classes are fitted on the support set like the unseen ones."""
        if not self.known:
            return self
        missing = [c for c in seen if c not in self.known]
        if missing:
            raise ModelError(
                f"The run's head was not trained on the seen class(es) {', '.join(missing)} (it knows "
                f"{', '.join(self.known) or 'no named classes'}).",
                "Evaluate a run trained on the meta-train classes (cxr train --classes base), or drop --seen-ways.",
            )
        clone = copy.copy(self)
        clone.seen_rows = tuple(self.known.index(c) for c in seen)
        return clone

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> Any:
        check_support(support_y, self.ways)
        if self.mode == "head":
            return self._fit_head(support_x, support_y, generator)
        return self._fit_all(support_x, support_y, generator)

    def _new_head(self, in_features: int, generator: torch.Generator | None, device: Any) -> tuple[Any, Any]:
        """``(head, new)``: the episode's head and its trainable part (fresh rows for the unseen classes; the
        seen classes' trained rows, frozen, after them)."""
        new = fresh_linear(in_features, self.ways - len(self.seen_rows), generator, device)
        if not self.seen_rows:
            return new, new
        return split_head(new, _known_rows(self.model, self.seen_rows, device)), new

    def _fit_head(self, support_x: Tensor, support_y: Tensor, generator: torch.Generator | None) -> Any:
        import torch

        model: Any = self.model
        with torch.no_grad():
            feats = torch.cat(
                [
                    model.forward_features(support_x[i : i + self.batch_size]).float()
                    for i in range(0, len(support_x), self.batch_size)
                ]
            )
        head, new = self._new_head(feats.shape[1], generator, feats.device)
        targets = support_y[:, : new.out_features]
        train_full_batch(new, new.parameters(), lambda: new(feats), targets, self.steps, self.lr)
        return _HeadScorer(model, head.eval(), self.batch_size)

    def _fit_all(self, support_x: Tensor, support_y: Tensor, generator: torch.Generator | None) -> Any:
        from cxr_tools.methods.maml.norm import frozen_batchnorm

        net: Any = copy.deepcopy(self.model).eval()
        for p in net.parameters():
            p.requires_grad_(True)
        net.head, new = self._new_head(int(net.num_features), generator, model_device(self.model))
        net.num_classes = self.ways
        n_new = new.out_features
        with frozen_batchnorm(net):
            train_full_batch(
                net, net.parameters(), lambda: net(support_x)[:, :n_new], support_y[:, :n_new], self.steps, self.lr
            )
        return _NetScorer(net, self.batch_size)


def _known_rows(model: Any, rows: Sequence[int], device: Any) -> nn.Linear:
    """A frozen linear layer holding the trained head's ``rows`` (the seen classes' knowledge)."""
    import torch
    from torch import nn

    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ModelError(
            f"The run's head is {type(head).__name__}, not a linear layer: its seen classes cannot be scored.",
            "Drop --seen-ways for this run.",
        )
    index = torch.as_tensor(list(rows), dtype=torch.long, device=head.weight.device)
    layer = nn.Linear(head.in_features, len(rows), bias=head.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(head.weight.index_select(0, index))
        if head.bias is not None:
            layer.bias.copy_(head.bias.index_select(0, index))
    layer.requires_grad_(False)
    return layer.to(device)


@functools.cache
def _split_head_class() -> Any:
    """The ``nn.Module`` of :func:`split_head`, defined on first use so importing this module needs no torch."""
    from torch import nn

    class SplitHead(nn.Module):
        """Logits of the fresh (unseen) rows, then of the frozen trained (seen) rows."""

        def __init__(self, new: nn.Module, known: nn.Module) -> None:
            super().__init__()
            self.new = new
            self.known = known

        def forward(self, x: Any) -> Any:
            import torch

            return torch.cat([self.new(x), self.known(x)], dim=1)

    return SplitHead


def split_head(new: nn.Module, known: nn.Module) -> nn.Module:
    """A head whose logits are ``new``'s (the unseen classes) then ``known``'s (the seen classes)."""
    return _split_head_class()(new, known)


def train_full_batch(module: nn.Module, params: Any, logits_fn: Any, targets: Tensor, steps: int, lr: float) -> None:
    """``steps`` full-batch Adam steps on the masked BCE-with-logits of ``logits_fn()`` against ``targets``.

    The loop of fine-tuning and of an Adam-budget ``scratch`` (:mod:`cxr_tools.methods.scratch`).
    """
    import torch

    from cxr_tools.methods.maml.losses import multilabel_bce

    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    targets = targets.float()
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = multilabel_bce(logits_fn().float(), targets)
            loss.backward()
            optimizer.step()
    module.zero_grad(set_to_none=True)


class _HeadScorer(SupportAsQueries):
    def __init__(self, model: nn.Module, head: nn.Module, batch_size: int) -> None:
        self.model: Any = model
        self.head = head
        self.batch_size = batch_size

    def predict(self, x: Tensor) -> Tensor:
        def logits(chunk: Tensor) -> Tensor:
            return self.head(self.model.forward_features(chunk).float())

        return predict_in_chunks(logits, self.model, x, self.batch_size)


class _NetScorer(SupportAsQueries):
    def __init__(self, net: nn.Module, batch_size: int) -> None:
        self.net = net
        self.batch_size = batch_size

    def predict(self, x: Tensor) -> Tensor:
        return predict_in_chunks(self.net, self.net, x, self.batch_size)
