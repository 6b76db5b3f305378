"""Engine of ``cxr predict``: per-image class probabilities for a folder, a file or a list of images.

Orchestration only; the parts live where they belong:

* **The model's own preprocessing** (:mod:`cxr_tools.data.decoding.for_model`): the operations recorded in
  ``model.json``, decoded by ``cxr preprocess``'s own function and scaled by
  :func:`~cxr_tools.models.inputs.to_model_input`, so a file reaches the model as exactly the tensor it would
  have been after ``preprocess`` + training.
* **Streaming** (:mod:`cxr_tools.methods.score_stream`): inputs are decoded on worker processes (``workers``)
  while the parent runs the model on full batches, so memory stays flat and decoding overlaps inference.
* **Scores** (:mod:`cxr_tools.methods.scoring`): eval mode, no batch effects; with ``support`` the run is first
  adapted to a labelled support set and the output columns are the support set's classes.
* **Resumable** (:mod:`cxr_tools.data.predict_io.predictions`): rows are appended to a hidden partial file and
  renamed to the output at the end; a rerun after ``kill -9``, a SLURM time limit or Ctrl-C continues after the last
  complete row when the settings are the same, and ends with the same file.
* **Honest partial failure.** A file that cannot be read (missing, corrupt, not an image) gets a row with empty
  probabilities and the reason in ``error``; the run continues. The result counts them; the CLI exits 3.

The CSV (docs/design.md, "Predictions CSV"): ``path``, one probability column per class, ``<class>_pred``
columns (0/1), ``error``; one row per input in input order; complete whenever it exists. The thresholds of the
``_pred`` columns (by default chosen on the support set, else the run's validation thresholds, else 0.5;
:func:`~cxr_tools.eval.thresholds.resolve_thresholds`) and their rule go to ``<name>.thresholds.json`` beside
it; ``threshold="none"`` leaves both out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tools.config import check_at_least
from cxr_tools.data.decoding.for_model import model_ops
from cxr_tools.data.predict_io.inputs import InputItem, list_inputs
from cxr_tools.data.predict_io.predictions import (
    PredictionsWriter,
    fingerprint_inputs,
    fingerprint_path,
    header,
    thresholds_path,
)
from cxr_tools.errors import ConfigError, InputError
from cxr_tools.eval.thresholds import resolve_thresholds
from cxr_tools.methods.adapters import resolve_method
from cxr_tools.methods.score_stream import score_into
from cxr_tools.methods.scoring import SupportOptions, load_scorer, weights_fingerprint
from cxr_tools.runtime.devices import resolve_device
from cxr_tools.runtime.outputs import OutputSpec, decide, json_record
from cxr_tools.runtime.progress import Progress, null_progress
from cxr_tools.workspace.choice import choice_path

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: Failures listed in the result (all are in the CSV).
MAX_LISTED_FAILURES = 200


@dataclass(frozen=True)
class PredictConfig:
    """Settings of ``cxr predict``.

    Attributes:
        input: an image folder (recursive), an image file, or a CSV / text list of paths.
        output: the predictions CSV to write.
        model: a run directory or model folder.
        batch_size: images per forward pass (scores do not depend on it).
        workers: decoding processes; 0 = in this process; None = a quarter of the cores on a CPU device (the
            forward's threads use the rest), every core with an accelerator (64+ inputs; see ``_workers``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: mixed precision on CUDA.
        threshold: the thresholds of the ``<label>_pred`` columns: None / ``auto`` (the support set's, else the
            run's validation-chosen ones, else 0.5), ``support``, ``none`` (no ``_pred`` column), ``0.5`` for every
            class, or ``Effusion=0.3,Mass=0.6`` per class.
        support: a labelled support set (CSV ``path,<class>...`` or class folders) to adapt to first.
        min_support: positives every support class needs.
        method: adaptation method (``auto`` follows the run's training kind; see ``cxr_tools.methods``).
        finetune: ``head`` or ``all`` when fine-tuning.
        seed: seed of the adaptation (a fresh head's initialisation).
        overwrite: replace an existing output CSV.
        resume: continue an interrupted run's partial output (same settings); False starts over.
        cam: write Grad-CAM overlay PNGs here (:mod:`cxr_tools.models.saliency`), per image and per finding at
            or above its threshold (0.5 without one), or per finding of ``cam_classes`` (``A,B``).
    """

    input: Path
    output: Path
    model: Path
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    amp: bool = False
    threshold: str | None = None
    support: Path | None = None
    min_support: int = 1
    method: str = "auto"
    finetune: str = "head"
    seed: int = 0
    overwrite: bool = False
    resume: bool = True
    cam: Path | None = None
    cam_classes: str | None = None

    def __post_init__(self) -> None:
        check_at_least("--batch-size", self.batch_size)
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0 (got {self.workers}).")
        check_at_least("--min-support", self.min_support)


@dataclass(frozen=True)
class PredictResult:
    """What ``cxr predict`` did. ``failures`` lists up to 200 ``(path, reason)`` pairs (all are in the CSV);
    ``n_resumed`` rows came from an interrupted earlier run and ``images_per_second`` counts this run's only;
    ``threshold_rule`` says how ``thresholds`` were chosen and ``thresholds_file`` where they were written."""

    output: Path
    model: str
    training: str
    labels: tuple[str, ...]
    thresholds: dict[str, float] | None
    n_inputs: int
    n_ok: int
    n_failed: int
    n_skipped: int
    n_resumed: int
    method: str | None
    n_support: int
    seconds: float
    images_per_second: float
    failures: tuple[tuple[str, str], ...]
    threshold_rule: str | None = None
    thresholds_file: Path | None = None
    cam: Path | None = None
    n_cam: int = 0


def run_predict(config: PredictConfig, progress: Progress | None = None) -> PredictResult:
    """Score every input of ``config.input`` and write the predictions CSV (module docstring).

    Raises:
        InputError: the input does not exist or holds no image.
        OutputExistsError: the output exists and ``overwrite`` is off.
        ModelError: the run cannot predict (a MAML / Siamese run without a support set, a broken model folder).
        DataError: the support set lacks positives or negatives, or one of its images is unreadable.
    """
    progress = null_progress(progress)
    if config.cam is not None and config.support is not None:
        raise ConfigError("--cam explains the run's own finding head, not a support-adapted scorer.", "Drop --cam.")
    started = time.perf_counter()
    out = Path(config.output)
    # an existing CSV is replaced at the final rename; a CSV this command did not write is never replaced
    decide(out, PREDICTIONS_SPEC, overwrite=config.overwrite)
    for side, keys in ((thresholds_path(out), ("predictions", "rule")), (choice_path(out), ("model", "chosen_by"))):
        decide(side, replace(PREDICTIONS_SPEC, what="side file", recognise=json_record(*keys)), overwrite=True)
    inputs = list_inputs(config.input)
    if not inputs.items:
        extra = f" ({len(inputs.skipped)} other file(s) skipped)" if inputs.skipped else ""
        raise InputError(
            f"No images found in {config.input}{extra}.",
            "Give a folder with PNG / JPEG / DICOM files, an image file, or a CSV list of paths.",
        )

    support = None
    if config.support is not None:
        support = SupportOptions(
            Path(config.support), config.min_support, config.method, config.finetune, config.batch_size, config.seed
        )
    scorer, meta, labels, n_support = load_scorer(
        config.model, resolve_device(config.device), amp=config.amp, support=support, progress=progress
    )
    thresholds, record = resolve_thresholds(config.threshold, labels, meta, scorer.support_thresholds)
    ops = model_ops(meta)
    cams = None
    if config.cam is not None:
        from cxr_tools.models.saliency import CamFolder

        cams = CamFolder.plan(Path(config.cam), labels, config.cam_classes, overwrite=config.overwrite)

    n = len(inputs.items)
    writer = PredictionsWriter(
        out,
        header(labels, thresholds),
        _settings(config, meta, labels, thresholds, inputs.items),
        inputs.items,
        resume=config.resume,
    )
    try:
        done = len(writer.resumed_rows)
        if done:
            log.info("resuming %s after %d of %d rows", out, done, n)
        todo = inputs.items[done:]
        from cxr_tools.runtime.devices import explain_out_of_memory

        with explain_out_of_memory(
            f"Out of memory scoring batches of {config.batch_size} images at {ops.size} px on {scorer.device}.",
            f"Lower --batch-size; the rows scored so far are kept in {writer.partial.name} and a rerun resumes.",
        ):
            errors, loop_seconds = score_into(
                writer, todo, scorer, ops, labels, thresholds, config.workers, config.batch_size, progress, done, n
            )
        writer.finish()
    finally:
        writer.close()
    if cams is not None:  # Grad-CAM overlays: the inputs decoded again, explained by the run's own head
        from cxr_tools.data.decoding.for_model import decode_stream

        for start, block, rejected in decode_stream(inputs.items, ops, workers=0, chunk=config.batch_size):
            cams.write(scorer.model, meta, block, start, rejected, inputs.items, thresholds)
    thresholds_file = None
    if record is not None:
        from cxr_tools.runtime.fs import atomic_write_json

        thresholds_file = atomic_write_json(thresholds_path(out), {"predictions": out.name, **record})
        log.info("thresholds: %s -> %s", record["rule"], thresholds_file)

    failed = [(row[0], row[-1]) for row in writer.resumed_rows if row[-1]]
    failed += [(todo[i].display, errors[i]) for i in range(len(todo)) if errors[i]]
    n_new_ok = len(todo) - sum(1 for e in errors if e)
    return PredictResult(
        output=out,
        model=str(meta.get("path")),
        training=str(meta.get("training")),
        labels=tuple(labels),
        thresholds=thresholds,
        n_inputs=n,
        n_ok=n - len(failed),
        n_failed=len(failed),
        n_skipped=len(inputs.skipped),
        n_resumed=done,
        method=None if n_support == 0 else resolve_method(config.method, str(meta.get("training"))),
        n_support=n_support,
        seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(n_new_ok / loop_seconds, 2) if loop_seconds > 0 else 0.0,
        failures=tuple(failed[:MAX_LISTED_FAILURES]),
        threshold_rule=None if record is None else str(record["rule"]),
        thresholds_file=thresholds_file,
        cam=cams.folder if cams is not None else None,
        n_cam=cams.written if cams is not None else 0,
    )


def _is_predictions(path: Path) -> tuple[str, ...] | None:
    """A CSV this command wrote: its header starts with ``path`` and ends with ``error`` (``--overwrite`` replaces
    nothing else)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.readline().rstrip("\r\n").split(",")
    return (path.name,) if head[0] == "path" and head[-1] == "error" else None


#: The predictions CSV: a file, replaced only with ``--overwrite`` and only when its header is ours; its side files
#: (``<name>.thresholds.json``, ``<name>.csv.model.json``) are replaced with it, when their content is ours.
PREDICTIONS_SPEC = OutputSpec(command="predict", what="predictions CSV", file=True, recognise=_is_predictions)


def _settings(
    config: PredictConfig,
    meta: Mapping[str, Any],
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None,
    items: Sequence[InputItem],
) -> dict[str, Any]:
    """What the rows depend on: a partial output is resumed only when all of it is unchanged."""

    return {
        "model": str(Path(str(meta.get("path"))).resolve()),
        "weights": weights_fingerprint(meta),
        "labels": list(labels),
        "thresholds": dict(thresholds) if thresholds else None,
        "support": fingerprint_path(config.support),
        "method": config.method,
        "finetune": config.finetune,
        "min_support": config.min_support,
        "seed": config.seed,
        "amp": config.amp,
        "inputs": len(items),
        "inputs_sha256": fingerprint_inputs(items),
    }
