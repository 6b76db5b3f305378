"""Logistic-regression baselines: on the raw pixels (``pixels``) or on a run's frozen features (``linear-probe``).

The simple baselines a few-shot result must beat (Chen et al. 2019, "A Closer Look at Few-shot Classification",
ICLR: a linear classifier on fixed features is competitive with meta-learning). Per episode and per class ``c``
one scikit-learn :class:`~sklearn.linear_model.LogisticRegression` is fitted on the support set — findings are not
mutually exclusive, so an episode is ``ways`` independent binary problems: positives of ``c`` against every other
support image (the pure negatives and the positives of other classes that lack ``c``); NaN (unknown) targets are
left out. Queries are scored with ``predict_proba``.

* ``pixels``: the features are the flattened preprocessed image, scaled to [0, 1] (``cxr evaluate`` feeds the
  cache images with the ``unit`` normalisation; no run, no network).
* ``linear-probe``: the features are a run's frozen representation, computed in eval mode without gradients: a
  Siamese run's L2-normalised embedding (what its contrastive loss shaped), else the backbone's pooled features
  before the head (``forward_features``), for supervised and MAML runs alike.

The features are standardised with the *support* set's per-feature mean and standard deviation (``standardise``;
a constant feature keeps scale 1), so the query set never influences the fit, and then the L2-penalised logistic
regression (inverse strength ``C``, L-BFGS) is fitted. Nothing is random: the ``fit`` generator is accepted for
the common interface and unused, so fits are deterministic; every query is scored row by row, so its score does
not depend on its batch-mates. Standardisation also makes the pixel baseline indifferent to an affine input
normalisation (e.g. ``imagenet`` inputs at ``cxr predict --support``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.methods.adapters import SupportAsQueries, check_support, outputs_in_chunks

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

#: Inverse L2 strength of the logistic regression (scikit-learn's default: no tuning on the meta-test classes).
DEFAULT_C = 1.0
#: L-BFGS iterations; a 10-40 image support set converges in far fewer.
MAX_ITER = 1000
#: The input range the pixel baseline is defined on (cache uint8 / 255).
PIXELS_NORMALISATION = "unit"

FeatureFn = Callable[["Tensor"], "Tensor"]


class LogisticScorer(SupportAsQueries):
    """Scores images with the per-class logistic regressions fitted on one support set (``support_scores``: the
    support images through the fitted regressions, in-sample)."""

    def __init__(self, features: Callable[[Tensor], np.ndarray], scaler: Any, classifiers: list[Any]) -> None:
        self.features = features
        self.scaler = scaler
        self.classifiers = classifiers

    def predict(self, x: Tensor) -> Tensor:
        """Probabilities float32 ``[n, ways]`` (CPU), one column per episode class."""
        import torch
        from threadpoolctl import threadpool_limits

        feats = self.features(x)
        if len(feats) == 0:
            raise ModelError("Nothing to score: the image batch is empty.")
        with threadpool_limits(1):
            if self.scaler is not None:
                feats = self.scaler.transform(feats)
            columns = [clf.predict_proba(feats)[:, list(clf.classes_).index(1)] for clf in self.classifiers]
        return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))


class LogisticAdapter:
    """Per-class logistic regression on fixed features of the support set (module docstring).

    Args:
        method: ``pixels`` or ``linear-probe`` (recorded by :func:`~cxr_tools.methods.adapters.describe`).
        features: images ``[n, 1, H, W]`` -> float64 features ``[n, D]`` (numpy).
        ways: classes per support set.
        c: inverse regularisation strength.
        standardise: standardise features with the support set's statistics.
        feature_source: what the features are (recorded), e.g. ``pixels`` or ``backbone``.
    """

    def __init__(
        self,
        method: str,
        features: Callable[[Tensor], np.ndarray],
        ways: int,
        *,
        c: float = DEFAULT_C,
        standardise: bool = True,
        feature_source: str = "pixels",
        model: nn.Module | None = None,
    ) -> None:
        if not c > 0:
            raise ConfigError(f"The logistic-regression C must be > 0 (got {c}).")
        self.method = method
        self.features = features
        self.ways = ways
        self.c = float(c)
        self.standardise = bool(standardise)
        self.feature_source = feature_source
        self.model = model

    def settings(self) -> dict[str, Any]:
        """What ``summary.json`` records about the fit."""
        return {
            "features": self.feature_source,
            "classifier": "logistic-regression",
            "C": self.c,
            "standardise": self.standardise,
            "solver": "lbfgs",
            "max_iter": MAX_ITER,
        }

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> LogisticScorer:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        check_support(support_y, self.ways)
        feats = self.features(support_x)
        targets = support_y.detach().float().cpu().numpy()
        # one BLAS thread: on a busy machine, threads on a 20 x 2304 problem made each fit 10x slower
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations short changes no metric
            scaler = StandardScaler().fit(feats) if self.standardise else None
            if scaler is not None:
                feats = scaler.transform(feats)
            classifiers = [self._fit_class(feats, targets[:, j], j) for j in range(self.ways)]
        return LogisticScorer(self.features, scaler, classifiers)

    def _fit_class(self, feats: np.ndarray, target: np.ndarray, j: int) -> Any:
        """The binary logistic regression of class column ``j`` (NaN targets left out)."""
        from sklearn.linear_model import LogisticRegression

        known = ~np.isnan(target)
        y = (target[known] > 0.5).astype(np.int64)
        if y.min(initial=1) == 1 or y.max(initial=0) == 0:
            raise ModelError(
                f"Class column {j} lacks a positive or a negative support image.",
                "Give positives and negatives of every class in the support set.",
            )
        return LogisticRegression(C=self.c, solver="lbfgs", max_iter=MAX_ITER).fit(feats[known], y)


def pixel_features(x: Tensor) -> np.ndarray:
    """The flattened images ``[n, H*W]`` as float64."""
    return x.detach().float().cpu().reshape(len(x), -1).numpy().astype(np.float64)


def frozen_features(model: nn.Module, meta: Mapping[str, Any] | None) -> tuple[FeatureFn, str]:
    """``(features, source)``: a Siamese run's L2-normalised embedding, else the backbone's pooled features."""
    import torch.nn.functional as F

    if not hasattr(model, "forward_features"):
        raise ModelError(f"{type(model).__name__} has no forward_features(); a linear probe needs a zoo model.")
    net: Any = model
    if meta is not None and meta.get("training") == "siamese":

        def embedding(x: Tensor) -> Tensor:
            return F.normalize(net(x).float(), dim=1)

        return embedding, "embedding"
    return (lambda x: net.forward_features(x).float()), "backbone"


def pixels_adapter(ways: int, *, c: float = DEFAULT_C, standardise: bool = True) -> LogisticAdapter:
    """The ``pixels`` baseline: logistic regression on the flattened images."""
    return LogisticAdapter("pixels", pixel_features, ways, c=c, standardise=standardise, feature_source="pixels")


def linear_probe_adapter(
    model: nn.Module,
    meta: Mapping[str, Any] | None,
    ways: int,
    *,
    c: float = DEFAULT_C,
    standardise: bool = True,
    batch_size: int = 256,
) -> LogisticAdapter:
    """The ``linear-probe`` baseline: logistic regression on ``model``'s frozen features (:func:`frozen_features`)."""
    fn, source = frozen_features(model, meta)
    model.eval()

    def features(x: Tensor) -> np.ndarray:
        return outputs_in_chunks(fn, model, x, batch_size).numpy().astype(np.float64)

    return LogisticAdapter(
        "linear-probe", features, ways, c=c, standardise=standardise, feature_source=source, model=model
    )
