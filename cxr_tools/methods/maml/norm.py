"""Normalisation layers under MAML: keep a query's score independent of its batch-mates.

Two problems meet here. A BatchNorm layer in train mode normalises with the statistics of the batch it is given,
so a query image's score would depend on which other images share its batch (and a balanced query batch leaks
its labels, one of the seed projects' evaluation bugs). And learn2learn's ``clone()`` does not copy BatchNorm's
running-statistics buffers: every clone writes into the *model's* ``running_mean``/``running_var`` in place, so
adapting on a support set of one task silently changes the statistics used for every later task.

Our choice: **normalisation is never computed over a batch during adaptation or query scoring.**

* Recommended backbones use GroupNorm (or LayerNorm / InstanceNorm), which normalise each image on its own: no
  batch dependence, nothing to share, nothing to do.
* BatchNorm backbones (e.g. an ImageNet ResNet used as an initialisation) are run with their BatchNorm layers in
  eval mode for the whole inner loop and the query forward (:func:`frozen_batchnorm`): they normalise with their
  stored running statistics, which the meta-step then never changes (not by the model, not by any clone). The
  BatchNorm affine weights still adapt and meta-learn. The running statistics therefore stay those of the
  initialisation — meaningful for a pre-trained backbone, the identity (mean 0, variance 1) for a random one,
  which is one more reason to prefer GroupNorm when training from scratch.
* A BatchNorm layer built with ``track_running_stats=False`` has no running statistics and uses batch statistics
  even in eval mode; it cannot be made batch-independent, so :func:`check_batch_independent` refuses it.

Per-task support-set statistics (transductive batch norm, TaskNorm) were the alternative; they tie a query's
score to the support set's composition and need per-engine plumbing, so we did not take them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cxr_tools.errors import ModelError


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BatchNorm layer of ``model`` (any dimensionality, SyncBatchNorm included), with its name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def check_batch_independent(model: nn.Module) -> None:
    """Raise :class:`ModelError` if some normalisation layer can only use batch statistics.

    Raises:
        ModelError: a BatchNorm layer has ``track_running_stats=False`` (batch statistics even in eval mode).
    """
    bad = [name or "<root>" for name, m in batchnorm_layers(model) if not m.track_running_stats]
    if bad:
        raise ModelError(
            f"BatchNorm layer(s) {', '.join(bad)} have track_running_stats=False, so a query's score would depend "
            "on the other images in its batch.",
            "Use a backbone with GroupNorm, or BatchNorm with running statistics (track_running_stats=True).",
        )


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Put every BatchNorm layer of ``model`` in eval mode for the duration of the block, then restore it.

    In eval mode BatchNorm normalises with its running statistics and does not update them, so neither the model
    nor learn2learn clones (which share those buffers) change them, and each image is scored on its own. Other
    layers keep their mode (dropout stays as the caller set it). Clones and patched copies made *inside* the
    block inherit the eval mode.
    """
    check_batch_independent(model)
    switched = [m for _, m in batchnorm_layers(model) if m.training]
    for m in switched:
        m.train(False)
    try:
        yield model
    finally:
        for m in switched:
            m.train(True)
