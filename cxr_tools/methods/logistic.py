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

**Support scores** (what ``--threshold support`` chooses its threshold on) are *cross-validated*: a regression
separates its own 10-40 support images almost perfectly, so in-sample scores put the threshold midway between
the classes wherever that is. Per class, each support image is scored by the regression fitted (standardiser
included) on the other folds of a stratified :data:`SUPPORT_FOLDS`-fold split, exactly as queries are scored by
the full fit (:func:`cross_validated_scores`). A class with a single support positive or negative (1-shot)
cannot be cross-validated and keeps in-sample scores; ``settings.support_scores`` says so. It is cheap: with
``d`` features and ``n`` support images the regression's optimum lies in the span of the ``n`` training rows, so
each fold is fitted on their ``n``-dimensional projection (a thin SVD), the same optimum at a fraction of the cost
of ``d``-dimensional L-BFGS.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.methods.adapters import check_support, fit_embedded

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from cxr_tools.methods.embedding_cache import FeatureSource

#: Inverse L2 strength of the logistic regression (scikit-learn's default: no tuning on the meta-test classes).
DEFAULT_C = 1.0
#: L-BFGS iterations; a 10-40 image support set converges in far fewer.
MAX_ITER = 1000
#: The input range the pixel baseline is defined on (cache uint8 / 255).
PIXELS_NORMALISATION = "unit"
#: Folds of the support-set cross-validation behind ``support_scores`` (fewer when a class has fewer positives).
SUPPORT_FOLDS = 5
#: What ``settings.support_scores`` says about them.
SUPPORT_SCORING = (
    f"cross-validated ({SUPPORT_FOLDS}-fold, stratified; in-sample for a class with a single support positive or "
    "negative)"
)


class LogisticScorer:
    """Scores features with the per-class logistic regressions fitted on one support set's features;
    ``support_scores`` are cross-validated on that support set (module docstring)."""

    def __init__(self, scaler: Any, classifiers: list[Any], *, c: float = DEFAULT_C, standardise: bool = True) -> None:
        self.scaler = scaler
        self.classifiers = classifiers
        self.c = c
        self.standardise = standardise

    def support_scores(self, support_features: Tensor, support_y: Tensor) -> Tensor:
        """Out-of-fold probabilities ``[n, ways]`` of the support images (in-sample for a class that cannot be
        cross-validated, and for an image whose target is unknown)."""
        import torch

        feats = as_float64(support_features)
        targets = support_y.detach().float().cpu().numpy()
        with small_fits():
            scaled = self.scaler.transform(feats) if self.scaler is not None else feats
            out = np.stack([clf.predict_proba(scaled)[:, list(clf.classes_).index(1)] for clf in self.classifiers], 1)
            for j in range(len(self.classifiers)):
                scores = cross_validated_scores(feats, targets[:, j], c=self.c, standardise=self.standardise)
                if scores is not None:
                    known = ~np.isnan(scores)
                    out[known, j] = scores[known]
        return torch.from_numpy(out.astype(np.float32))

    def predict(self, features: Tensor) -> Tensor:
        """Probabilities float32 ``[n, ways]`` (CPU), one column per episode class."""
        import torch

        feats = as_float64(features)
        if len(feats) == 0:
            raise ModelError("Nothing to score: the image batch is empty.")
        with small_fits():
            if self.scaler is not None:
                feats = self.scaler.transform(feats)
            columns = [clf.predict_proba(feats)[:, list(clf.classes_).index(1)] for clf in self.classifiers]
        return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))


@functools.cache
def _thread_pools() -> Any:
    """The process's BLAS / OpenMP pools, found once: ``threadpool_limits`` searches the loaded libraries on
    every call (1.4 ms; an evaluation enters it several times per episode), a kept controller does not."""
    import sklearn.linear_model  # noqa: F401  (loads scipy's and numpy's BLAS before the search)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def small_fits() -> Iterator[None]:
    """The setting of the many tiny fits of an evaluation: one BLAS thread (on a busy machine, threads on a
    20 x 2304 problem made each fit 10x slower) and no scikit-learn parameter validation (the parameters are
    this module's constants; it took a quarter of each fit's time). Data checks (NaN, shapes) still run."""
    import sklearn

    with _thread_pools().limit(limits=1), sklearn.config_context(skip_parameter_validation=True):
        yield


def as_float64(features: Tensor) -> np.ndarray:
    """Feature rows as the float64 numpy matrix scikit-learn fits on."""
    return features.detach().float().cpu().numpy().astype(np.float64)


class LogisticAdapter:
    """Per-class logistic regression on fixed features of the support set (module docstring).

    ``support_scoring`` (recorded in ``settings``) says how the support images are scored for thresholds.

    Args:
        method: ``pixels`` or ``linear-probe`` (recorded by :func:`~cxr_tools.methods.adapters.describe`).
        embed: images ``[n, 1, H, W]`` -> float32 features ``[n, D]`` (CPU tensor).
        ways: classes per support set.
        c: inverse regularisation strength.
        standardise: standardise features with the support set's statistics.
        feature_source: what the features are (recorded), e.g. ``pixels`` or ``backbone``.
        source, post: the frozen network function behind ``embed`` (what cached features are keyed by) and what
            turns its rows into ``embed``'s (None: as they are), so that ``embed(x) == post(source(x))``.
    """

    def __init__(
        self,
        method: str,
        embed: Callable[[Tensor], Tensor],
        ways: int,
        *,
        c: float = DEFAULT_C,
        standardise: bool = True,
        feature_source: str = "pixels",
        model: nn.Module | None = None,
        source: FeatureSource | None = None,
        post: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not c > 0:
            raise ConfigError(f"The logistic-regression C must be > 0 (got {c}).")
        self.method = method
        self.embed = embed
        self.ways = ways
        self.c = float(c)
        self.standardise = bool(standardise)
        self.feature_source = source
        self.feature_post = post
        self.features_kind = feature_source
        self.model = model
        self.support_scoring = SUPPORT_SCORING

    def features(self, x: Tensor) -> np.ndarray:
        """The float64 features of images ``x`` the regressions are fitted on."""
        return as_float64(self.embed(x))

    def settings(self) -> dict[str, Any]:
        """What ``summary.json`` records about the fit."""
        return {
            "features": self.features_kind,
            "classifier": "logistic-regression",
            "C": self.c,
            "standardise": self.standardise,
            "solver": "lbfgs",
            "max_iter": MAX_ITER,
        }

    def fit(self, support_x: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None) -> Any:
        """Fit on the support images' features; the scorer takes images."""
        return fit_embedded(self, self.embed, support_x, support_y, generator)

    def fit_features(
        self, support_features: Tensor, support_y: Tensor, *, generator: torch.Generator | None = None
    ) -> LogisticScorer:
        """Fit on support features ``[n, D]`` (the rows :meth:`embed` gives); the scorer takes features."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.preprocessing import StandardScaler

        check_support(support_y, self.ways)
        feats = as_float64(support_features)
        targets = support_y.detach().float().cpu().numpy()
        with small_fits(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations short changes no metric
            scaler = StandardScaler().fit(feats) if self.standardise else None
            if scaler is not None:
                feats = scaler.transform(feats)
            classifiers = [self._fit_class(feats, targets[:, j], j) for j in range(self.ways)]
        return LogisticScorer(scaler, classifiers, c=self.c, standardise=self.standardise)

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


def cross_validated_scores(
    feats: np.ndarray, target: np.ndarray, *, c: float = DEFAULT_C, standardise: bool = True
) -> np.ndarray | None:
    """Out-of-fold probabilities of one class on the support set (NaN where the target is unknown), each image
    scored by the regression fitted on the other folds (:data:`SUPPORT_FOLDS`, stratified, in order); None when
    the class has fewer than two support positives or negatives, so no fold can hold one out.

    Each fold is fitted on its training rows' projection onto their own span (thin SVD): the L2-penalised
    optimum ``w`` lies in that span, so the fit, and every held-out score ``x . w``, equal those of the
    ``d``-dimensional fit, at the cost of an ``n``-dimensional one.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    known = np.flatnonzero(~np.isnan(target))
    y = (target[known] > 0.5).astype(np.int64)
    folds = min(SUPPORT_FOLDS, int(y.sum()), int(len(y) - y.sum()))
    if folds < 2:
        return None
    out = np.full(len(target), np.nan)
    x = np.asarray(feats, dtype=np.float64)[known]
    for train, test in StratifiedKFold(n_splits=folds).split(x, y):
        a, b = x[train], x[test]
        if standardise:
            mean, scale = a.mean(axis=0), a.std(axis=0)
            scale[scale == 0] = 1.0  # as StandardScaler: a constant feature keeps scale 1
            a, b = (a - mean) / scale, (b - mean) / scale
        _, s, vt = np.linalg.svd(a, full_matrices=False)
        basis = vt[s > s.max(initial=0.0) * 1e-12]
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER).fit(a @ basis.T, y[train])
        out[known[test]] = clf.predict_proba(b @ basis.T)[:, list(clf.classes_).index(1)]
    return out


def pixel_features(x: Tensor) -> np.ndarray:
    """The flattened images ``[n, H*W]`` as float64."""
    return as_float64(pixel_rows(x))


def pixel_rows(x: Tensor) -> Tensor:
    """The flattened images ``[n, H*W]`` as float32 on the CPU."""
    return x.detach().float().cpu().reshape(len(x), -1)


def pixels_adapter(ways: int, *, c: float = DEFAULT_C, standardise: bool = True) -> LogisticAdapter:
    """The ``pixels`` baseline: logistic regression on the flattened images."""
    return LogisticAdapter("pixels", pixel_rows, ways, c=c, standardise=standardise, feature_source="pixels")


def linear_probe_adapter(
    model: nn.Module,
    meta: Mapping[str, Any] | None,
    ways: int,
    *,
    c: float = DEFAULT_C,
    standardise: bool = True,
    batch_size: int = 256,
) -> LogisticAdapter:
    """The ``linear-probe`` baseline: logistic regression on ``model``'s frozen features.

    A Siamese run's features are its L2-normalised output, else the backbone's ``forward_features``: the
    :class:`~cxr_tools.methods.embedding_cache.FeatureSource` (``output`` / ``forward_features``) whose rows
    ``cxr evaluate`` computes once and shares with the other frozen-feature methods."""
    from cxr_tools.methods.embedding_cache import model_source
    from cxr_tools.models.siamese import is_siamese

    if not hasattr(model, "forward_features"):
        raise ModelError(f"{type(model).__name__} has no forward_features(); a linear probe needs a zoo model.")
    kind = "embedding" if is_siamese(meta) else "backbone"
    model.eval()
    source = model_source(model, "output" if kind == "embedding" else "forward_features", batch_size)
    post = normalise_rows if kind == "embedding" else None
    return LogisticAdapter(
        "linear-probe",
        source.then(post),
        ways,
        c=c,
        standardise=standardise,
        feature_source=kind,
        model=model,
        source=source,
        post=post,
    )


def normalise_rows(features: Tensor) -> Tensor:
    """Rows of unit L2 length (what a Siamese embedding is compared with)."""
    import torch.nn.functional as F

    return F.normalize(features, dim=1)
