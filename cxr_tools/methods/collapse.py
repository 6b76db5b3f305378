"""Noticing a meta-training run that collapsed to the label prior (docs/science.md, "Meta-training").

A collapsed network gives every image the same output: the query loss then sits at the cross-entropy of the
label prior (0.6365 for one positive in three, the classic 2-way single-label episode), and the adapted query
scores no longer rank positives above negatives. The loss alone cannot tell a collapse from a slow start (both sit
near the prior), and a threshold on the outputs' spread depends on their scale, so a meta-step counts as *flat*
when its query loss is no lower than the prior's cross-entropy minus :data:`LOSS_MARGIN` **and** the mean query
AUC of its tasks (after adaptation) is below :data:`FLAT_AUC`, or when the adapted outputs do not vary across
the query images at all (spread below :data:`FLAT_SPREAD`). A run has collapsed once :data:`STRETCH`
consecutive meta-steps are flat. Torch-free: the numbers come from
:func:`cxr_tools.methods.episodes.meta_gradient`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Consecutive flat meta-steps that make a collapse.
STRETCH = 20
#: A loss less than this far below the prior's cross-entropy (nats) is "at the prior".
LOSS_MARGIN = 0.02
#: Mean query AUC of a meta-step's tasks below which its outputs do not separate the classes.
FLAT_AUC = 0.6
#: Standard deviation of the adapted query logits across images below which the outputs are constant.
FLAT_SPREAD = 1e-4


def is_flat(values: Mapping[str, float]) -> bool:
    """Whether one meta-step's numbers (``loss``, ``prior_loss``, ``query_auc``, ``output_spread``) are flat."""
    if values.get("output_spread", 1.0) < FLAT_SPREAD:
        return True
    loss, prior, auc = values.get("loss"), values.get("prior_loss"), values.get("query_auc")
    if loss is None or prior is None or auc is None:
        return False
    return loss >= prior - LOSS_MARGIN and auc < FLAT_AUC


@dataclass
class CollapseWatch:
    """Counts consecutive flat meta-steps and remembers the first collapse; saved with the checkpoint.

    Attributes:
        flat: consecutive flat meta-steps up to the last one seen.
        since: the meta-step the current flat stretch began at (None when the last step was not flat).
        collapse: the first collapse: ``from_step`` (where its stretch began), ``detected_at_step``, ``prior_loss``
            and ``loss`` (means over the stretch); None if none.
        recovered_at_step: the first non-flat meta-step after the collapse (None while it lasts).
        advice: what the warning tells the user to change (MAML's inner loop by default; ProtoNet-ML has none).
    """

    flat: int = 0
    since: int | None = None
    sums: tuple[float, float] = (0.0, 0.0)
    collapse: dict[str, Any] | None = None
    recovered_at_step: int | None = None
    advice: str = "Lower --meta-lr, or raise --inner-lr / --adapt-steps."

    def update(self, step: int, values: Mapping[str, float], *, announce: bool = False) -> str | None:
        """Account meta-step ``step`` (1-based); return a warning the first time the run collapses (and log it
        when ``announce``: the main process of a distributed run)."""
        if not is_flat(values):
            if self.collapse is not None and self.recovered_at_step is None and self.flat:
                self.recovered_at_step = step
            self.flat, self.since, self.sums = 0, None, (0.0, 0.0)
            return None
        if self.since is None:
            self.since = step
        self.flat += 1
        self.sums = (self.sums[0] + values.get("loss", 0.0), self.sums[1] + values.get("prior_loss", 0.0))
        if self.flat < STRETCH or self.collapse is not None:
            return None
        loss, prior = self.sums[0] / self.flat, self.sums[1] / self.flat
        self.collapse = {"from_step": self.since, "detected_at_step": step, "loss": loss, "prior_loss": prior}
        message = (
            f"Meta-training collapsed to the label prior: for {STRETCH} meta-steps since step {self.since} the query "
            f"loss ({loss:.4f}) sat at the prior's cross-entropy ({prior:.4f}) and the outputs no longer separate "
            f"the classes (query AUC < 0.6). {self.advice}"
        )
        if announce:
            log.warning("%s", message)
        return message

    def report(self, best: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """What run.json records: the collapse, whether (and when) the run came out of it and, given the metrics
        record of the selected weights' validation (``best``; empty without one), whether they beat the prior;
        None without a collapse."""
        if self.collapse is None:
            return None
        out = {**self.collapse, "stretch": STRETCH, "recovered_at_step": self.recovered_at_step}
        if best is not None:
            out["beats_prior_on_validation"] = beats_prior(best.get("val_auc"), best.get("val_auc_ci95"))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "flat": self.flat,
            "since": self.since,
            "sums": list(self.sums),
            "collapse": self.collapse,
            "recovered_at_step": self.recovered_at_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.flat = int(state.get("flat", 0))
        self.since = state.get("since")
        sums = state.get("sums") or (0.0, 0.0)
        self.sums = (float(sums[0]), float(sums[1]))
        self.collapse = state.get("collapse")
        self.recovered_at_step = state.get("recovered_at_step")


def beats_prior(val_auc: float | None, val_auc_ci95: float | None) -> bool:
    """Whether the selected weights beat the label prior on meta-validation: their mean AUC exceeds 0.5 (what a
    constant output scores) by more than its 95% CI half-width. False without validation."""
    if val_auc is None:
        return False
    ci = val_auc_ci95 if val_auc_ci95 is not None and val_auc_ci95 == val_auc_ci95 else 0.0
    return val_auc - ci > 0.5


def unusable(collapse: Mapping[str, Any] | None) -> bool:
    """A run that collapsed and whose selected weights never beat the prior on validation (``cxr meta-train``
    exits 1)."""
    return collapse is not None and not collapse.get("beats_prior_on_validation", False)
