"""The decision threshold of F1 / precision / recall: one grammar, one module, used by evaluate, predict and train.

``--threshold`` is one grammar: ``support``, ``none`` or a probability everywhere (:func:`parse_rule`);
``cxr predict`` also takes ``auto`` (its default) and per-label values ``A=0.3,B=0.6``
(:func:`resolve_thresholds`, :func:`parse_thresholds`), since it writes a ``_pred`` column per label.

A few-shot model's scores are ranked well long before they are calibrated: in a 2-way episode each class sees
one positive per two negatives, so after adaptation most scores sit below 0.5 and a fixed 0.5 reports "nothing
detected" beside a good AUC. The rule (docs/science.md, "Thresholds"):

* ``support`` (the default of ``cxr evaluate``): per episode and class, the threshold that **maximises F1 on the
  support set's scores after adaptation** (:func:`choose_threshold`). The query set never enters it. The
  support is what the model adapted on, so these scores are optimistic; the choice is still honest, because
  only the queries are measured.
* a number in ``[0, 1]``: that threshold for every class and episode (``0.5`` was the old default);
* ``none``: no thresholded metric at all (AUC and AP only).

Ties: the F1-maximising cut falls *between* two adjacent distinct support scores, so the threshold is their
midpoint (a query scored like a support positive is called positive, one scored like a support negative is
not); when several cuts reach the same maximal F1, the lowest (most sensitive) one is taken. When every support
image is best called positive, the threshold is the lowest support score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_tools.errors import ConfigError

SUPPORT = "support"
NONE = "none"
#: ``cxr predict``'s default rule: the support set's thresholds, else the run's validation ones, else 0.5.
AUTO = "auto"
#: What ``predict`` and training fall back to when no rule can choose (stated wherever it is used).
DEFAULT_THRESHOLD = 0.5
#: The metrics a threshold decides (AUC and AP are threshold-free).
THRESHOLDED: tuple[str, ...] = ("f1", "precision", "recall")
#: How ``--threshold`` may be written (the usage error names them).
ACCEPTED = "'support' (chosen per episode and class on the support set), a probability in [0, 1], or 'none'"


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed ``--threshold``: ``kind`` is ``support``, ``fixed`` (with ``value``) or ``none``."""

    kind: str
    value: float | None = None

    @property
    def label(self) -> str:
        """How tables and files name the rule: ``support``, ``0.5``, ``none``."""
        return f"{self.value:g}" if self.kind == "fixed" and self.value is not None else self.kind

    @property
    def thresholded(self) -> bool:
        """Whether F1 / precision / recall are measured at all."""
        return self.kind != NONE

    def header(self, name: str) -> str:
        """A thresholded metric's column header names the rule (``F1@support``); others are left as they are."""
        return f"{name}@{self.label}" if self.thresholded and name.lower() in THRESHOLDED else name


def parse_rule(value: ThresholdRule | str | float | None) -> ThresholdRule:
    """``support`` / ``none`` / a probability -> a :class:`ThresholdRule`.

    Raises:
        ConfigError: anything else (the message names the accepted forms).
    """
    if isinstance(value, ThresholdRule):
        return value
    text = NONE if value is None else str(value).strip().lower()
    if text in (SUPPORT, NONE):
        return ThresholdRule(text)
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"--threshold {value!r} is not a threshold rule.", f"Use {ACCEPTED}.") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ConfigError(f"--threshold must be a probability in [0, 1] (got {value}).", f"Use {ACCEPTED}.")
    return ThresholdRule("fixed", number)


def choose_threshold(targets: np.ndarray | Sequence[float], scores: np.ndarray | Sequence[float]) -> float:
    """The threshold maximising F1 of ``scores >= t`` against ``targets`` (module docstring: midpoint, lowest tie).

    NaN targets (unknown) are left out. NaN when there is no positive (F1 is 0 at every threshold).
    """
    y = np.asarray(targets, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in shape")
    known = ~np.isnan(y)
    positive, s = y[known] > 0.5, s[known]
    if not positive.any():
        return math.nan
    # every cut "score >= level" at once (what sklearn's precision_recall_curve computes, without its
    # per-call validation overhead, which cost ~0.1-0.7 s a call, once per episode and class)
    order = np.argsort(-s, kind="stable")
    levels, hits = s[order], positive[order]
    last = np.r_[levels[1:] != levels[:-1], True]  # the last image of each distinct score level (descending)
    tp = np.cumsum(hits)[last]
    called = np.flatnonzero(last) + 1  # images at or above each level
    f1 = 2 * tp / (called + positive.sum())  # 2TP / (2TP + FP + FN)
    cuts = levels[last]
    k = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[-1])  # the lowest cut reaching the best F1
    return (float(cuts[k]) + float(cuts[k + 1])) / 2 if k + 1 < len(cuts) else float(cuts[k])


def choose_thresholds(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """:func:`choose_threshold` of every column of ``targets`` / ``scores`` ``[n, k]``: thresholds ``[k]``."""
    t = np.asarray(targets, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"targets {t.shape} and scores {s.shape} must be the same [n, k]")
    return np.array([choose_threshold(t[:, j], s[:, j]) for j in range(t.shape[1])], dtype=np.float64)


def episode_thresholds(rule: ThresholdRule, support_targets: np.ndarray, support_scores: np.ndarray) -> np.ndarray:
    """Per class, the threshold ``rule`` gives an episode (NaN for ``none``): chosen on the support set only."""
    k = np.asarray(support_targets).shape[1]
    if rule.kind == SUPPORT:
        return choose_thresholds(support_targets, support_scores)
    if rule.kind == "fixed" and rule.value is not None:
        return np.full(k, rule.value, dtype=np.float64)
    return np.full(k, math.nan, dtype=np.float64)


def describe_rule(rule: ThresholdRule) -> str:
    """One sentence saying how the thresholds were chosen (summary.json's ``threshold_rule``, the thresholds file)."""
    if rule.kind == SUPPORT:
        return (
            "per episode and class, the threshold maximising F1 on the support set's scores after adaptation "
            "(midpoint between adjacent support scores, lowest on ties; the query set never enters it)"
        )
    if rule.kind == "fixed":
        return f"the fixed threshold {rule.label} for every class"
    return "none: threshold-free metrics (AUC, AP) only"


# --- cxr predict's per-class thresholds (the ``<label>_pred`` columns) ---------------------------------------


def resolve_thresholds(
    text: str | None,
    labels: Sequence[str],
    meta: Mapping[str, Any],
    support_thresholds: Sequence[float] | np.ndarray | None,
) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """``(thresholds, record)``: the thresholds of the ``_pred`` columns and how they were chosen.

    ``text`` None / ``auto``: the support set's (``support_thresholds``) when there is one, else the run's
    validation-chosen ``extra.thresholds``, else 0.5 (labels the run chose none for get 0.5 too; the record says
    which). ``support`` insists on a support set; ``none`` gives no ``_pred`` column; a number or ``A=0.3,B=0.6``
    is used as given (:func:`parse_thresholds`).
    """
    rule = str(text).strip().lower() if text is not None and str(text).strip() else AUTO
    if rule == NONE:
        return None, None
    if rule == SUPPORT and support_thresholds is None:
        raise ConfigError("--threshold support needs a support set.", "Pass --support DIR|CSV, or a number.")
    if rule in (AUTO, SUPPORT) and support_thresholds is not None:
        values = [float(t) for t in support_thresholds]
        fallback = [label for label, t in zip(labels, values, strict=True) if not math.isfinite(t)]
        chosen = {label: t if math.isfinite(t) else DEFAULT_THRESHOLD for label, t in zip(labels, values, strict=True)}
        rule_text = (
            "per class, the threshold maximising F1 on the support set's scores after adaptation (midpoint between "
            "adjacent support scores, lowest on ties); optimistic, as the model adapted on those images"
        )
        return chosen, _record("support", rule_text, chosen, fallback)
    if rule == AUTO:
        run = dict((meta.get("extra") or {}).get("thresholds") or {})
        chosen, fallback = {}, []
        for label in labels:
            value = run.get(label)
            if value is None or not math.isfinite(float(value)):
                fallback.append(label)
                value = DEFAULT_THRESHOLD
            chosen[label] = float(value)
        if len(fallback) == len(labels):
            text_ = f"the default {DEFAULT_THRESHOLD:g}: the run recorded no validation-chosen thresholds"
            return chosen, _record("default", text_, chosen, [])
        source = str((meta.get("extra") or {}).get("threshold_rule") or "chosen on the run's validation split")
        return chosen, _record("validation", f"the run's validation thresholds ({source})", chosen, fallback)
    fixed = parse_thresholds(str(text), labels)
    return fixed, _record("fixed", f"--threshold {str(text).strip()}", fixed or {}, [])


def _record(source: str, rule: str, thresholds: Mapping[str, float], fallback: Sequence[str]) -> dict[str, Any]:
    """The thresholds file's content: where the values come from, the rule in words, the values."""
    note = f"; {', '.join(fallback)}: none could be chosen, 0.5 used" if fallback else ""
    return {"source": source, "rule": rule + note, "thresholds": dict(thresholds), "defaulted": list(fallback)}


def parse_thresholds(text: str | None, labels: Sequence[str]) -> dict[str, float] | None:
    """``"0.5"`` -> every label at 0.5; ``"A=0.3,B=0.6"`` -> those labels (others get no ``_pred`` column)."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()

    def number(value: str, what: str) -> float:
        try:
            t = float(value)
        except ValueError:
            raise ConfigError(f"--threshold {what}: {value!r} is not a number.") from None
        if not (math.isfinite(t) and 0.0 <= t <= 1.0):
            raise ConfigError(f"--threshold {what} must be a probability in [0, 1] (got {value}).")
        return t

    if "=" not in text:
        t = number(text, "")
        return {label: t for label in labels}
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--threshold part {part!r} is not LABEL=VALUE.", "Example: Effusion=0.3,Mass=0.6.")
        if name not in labels:
            raise ConfigError(f"--threshold names '{name}', which is not predicted.", f"Labels: {', '.join(labels)}.")
        out[name] = number(value.strip(), name)
    return {label: out[label] for label in labels if label in out}
