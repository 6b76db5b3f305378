"""A run turned into a scorer: class probabilities from uint8 images, adapted to a support set first if given.

``cxr predict`` orchestrates files and the CSV; this module holds what turns a model folder into numbers:

* **Batch-independent scores.** The model runs in eval mode under ``torch.inference_mode`` (BatchNorm uses its
  running statistics), so an image's scores depend on that image only; float32 kernels may still round the
  last bit differently for different batch shapes (< 1e-6).
* **Few-shot use** (a support set): the run is first adapted with the method its training kind calls for
  (:func:`~cxr_tools.methods.adapters.build_adapter`: MAML adaptation for a MAML run, nearest prototypes for a
  Siamese run, a fine-tuned head for a supervised one); the classes are then the support set's. MAML and
  Siamese runs have no fixed label head (:data:`NEEDS_SUPPORT`) and score only with a support set.
* **Support thresholds.** After adapting, the support set is scored as queries are and each class's threshold
  is the one maximising F1 on it (:func:`~cxr_tools.eval.thresholds.choose_thresholds`, ``support_thresholds``):
  what ``cxr predict`` decides with unless told otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.data.decoding.for_model import decode_stream, model_ops
from cxr_tools.data.predict_io.inputs import read_support
from cxr_tools.errors import DataError, ModelError
from cxr_tools.runtime.progress import Progress

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Training kinds whose head does not name findings: they score only after adapting to a support set.
NEEDS_SUPPORT: tuple[str, ...] = ("maml", "protonet", "siamese")


@dataclass(frozen=True)
class SupportOptions:
    """How to adapt to a support set: the set itself (CSV ``path,<class>...`` or class folders), the positives
    every class needs, the method (``auto`` follows the training kind), ``head``/``all`` fine-tuning, the
    batch size and the seed of the adaptation (a fresh head's initialisation)."""

    path: Path
    min_support: int = 1
    method: str = "auto"
    finetune: str = "head"
    batch_size: int = 32
    seed: int = 0


class RunScorer:
    """Probabilities ``[n, C]`` (float32, CPU) from uint8 images ``[n, H, W]``, in eval mode, without gradients.

    ``support_thresholds``: per class, the threshold chosen on the adapted support set (None without one).
    """

    def __init__(
        self,
        model: Any,
        meta: Mapping[str, Any],
        device: torch.device,
        amp: bool,
        adapted: Any,
        support_thresholds: np.ndarray | None = None,
    ) -> None:
        self.model = model
        self.meta = meta
        self.device = device
        self.amp = amp
        self.adapted = adapted
        self.support_thresholds = support_thresholds

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        from cxr_tools.models.inputs import to_model_input
        from cxr_tools.runtime.devices import autocast_context

        with torch.inference_mode():
            x = to_model_input(images, self.meta, self.device)
            if self.adapted is not None:
                return self.adapted.predict(x).float().numpy()
            with autocast_context(self.device, self.amp):
                logits = self.model(x)
            return torch.sigmoid(logits.float()).cpu().numpy()


def weights_fingerprint(meta: Mapping[str, Any]) -> Any:
    """What identifies a model folder's weights: the checksum its card records, else the file's size and time."""
    from cxr_tools.data.predict_io.predictions import fingerprint_path
    from cxr_tools.models.checkpoints import WEIGHTS_FILE

    folder = Path(str(meta.get("path")))
    return meta.get("weights_sha256") or fingerprint_path(folder / str(meta.get("weights_file") or WEIGHTS_FILE))


def load_scorer(
    model_path: Path, device: torch.device, *, amp: bool, support: SupportOptions | None, progress: Progress
) -> tuple[RunScorer, dict[str, Any], tuple[str, ...], int]:
    """Load the run, adapt it to the support set when given: ``(scorer, meta, labels, n_support)``.

    Raises:
        ModelError: a MAML / Siamese run without a support set, or a run without a classification head.
        DataError: the support set lacks positives or negatives, or one of its images is unreadable.
    """
    from cxr_tools.models import load_model_dir

    model, meta = load_model_dir(model_path, map_location=device)
    model.eval()
    training = str(meta.get("training"))
    if support is None:
        if training in NEEDS_SUPPORT:
            raise ModelError(
                f"{meta.get('path')} is a {training} run: it has no fixed label head and scores findings only "
                "relative to labelled examples.",
                "Pass --support DIR|CSV with a few labelled images per class (see `cxr predict --help`).",
            )
        labels = tuple(str(x) for x in meta.get("labels") or ())
        n_out = int(meta.get("num_classes") or 0)
        if n_out < 1:
            raise ModelError(f"{meta.get('path')} has no classification head.", "Pass --support to adapt it.")
        if len(labels) != n_out:
            labels = tuple(f"class_{j}" for j in range(n_out))
        return RunScorer(model, meta, device, amp, None), meta, labels, 0
    adapted, classes, n_support, cuts = _adapt(model, meta, device, support, progress)
    return RunScorer(model, meta, device, amp, adapted, cuts), meta, classes, n_support


def _adapt(
    model: Any, meta: Mapping[str, Any], device: torch.device, options: SupportOptions, progress: Progress
) -> tuple[Any, tuple[str, ...], int, np.ndarray]:
    """Decode the support set with the model's operations, fit the adapter and choose each class's threshold on
    the adapted support scores: ``(adapted, classes, n, thresholds)``."""
    import torch

    from cxr_tools.eval.thresholds import choose_thresholds
    from cxr_tools.methods.adapters import AdaptConfig, build_adapter
    from cxr_tools.models.inputs import to_model_input

    support = read_support(options.path, min_support=options.min_support)
    ops = model_ops(meta)
    images = np.empty((len(support.items), ops.size, ops.size), dtype=np.uint8)
    with progress.task("decode support", total=len(support.items)) as task:
        for start, block, rejected in decode_stream(support.items, ops, workers=0):
            if rejected:
                pos, reason = rejected[0]
                raise DataError(
                    f"Support image {support.items[pos].display} cannot be read: {reason}.",
                    "Fix or remove it from the support set.",
                )
            images[start : start + len(block)] = block
            task.advance(len(block))
    adapt_cfg = AdaptConfig(method=options.method, finetune=options.finetune, batch_size=options.batch_size)
    adapter = build_adapter(model, meta, len(support.classes), adapt_cfg, device=device)
    generator = torch.Generator().manual_seed(int(options.seed))
    with progress.task(f"adapt ({adapter.method})", total=1) as task:
        x, y = to_model_input(images, meta, device), torch.from_numpy(support.targets).to(device)
        adapted = adapter.fit(x, y, generator=generator)
        with torch.inference_mode():
            cuts = choose_thresholds(support.targets, adapted.support_scores(x, y).numpy())
        task.advance()
    log.info("adapted to %d support images of %d classes with %s", len(images), len(support.classes), adapter.method)
    return adapted, tuple(support.classes), len(images), cuts
