"""What the web page computes, without any Gradio: one run loaded once, and the four tabs' operations on it.

Every operation reuses the command-line code path it mirrors, so the page and the CLI cannot disagree:

* decoding: :func:`~cxr_tools.data.decoding.imaging.load_image` with the run's recorded operations
  (:func:`~cxr_tools.data.decoding.for_model.model_ops`), the function ``cxr predict`` and ``cxr similarity`` use;
* scores: :class:`~cxr_tools.methods.scoring.RunScorer` (eval mode, independent sigmoids per finding) and the
  CSV rows of :func:`~cxr_tools.data.predict_io.predictions.format_row` /
  :func:`~cxr_tools.data.predict_io.predictions.header`;
* similarity: :func:`~cxr_tools.models.siamese.embedder` with the run's trained distance, one image at a time;
* few-shot: :func:`~cxr_tools.methods.adapters.build_adapter` with method ``auto`` (MAML inner loop, fine-tuned
  head, or prototypes, after the run's training kind); the model given to an adapter is never modified.

Bad uploads raise :class:`~cxr_tools.errors.CxrError` subclasses whose message the page shows.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.data.decoding.for_model import model_ops
from cxr_tools.data.decoding.imaging import DICOM_EXTENSIONS, ImageDecodeError, load_image
from cxr_tools.data.predict_io.predictions import csv_text, format_row, header
from cxr_tools.errors import ConfigError, InputError, ModelError

log = logging.getLogger(__name__)

#: Training kinds with no finding head (they score only after adapting; see methods/scoring.py).
NEEDS_SUPPORT = ("maml", "protonet", "siamese")
#: A colour upload whose channels differ by more than this (mean absolute difference, 8-bit) is not an X-ray.
COLOUR_TOLERANCE = 12.0
#: Support folder names ``cxr predict --support`` treats as negatives (data/predict_io/inputs.py); a finding may
#: not use one.
NEGATIVE_NAMES = ("negative", "no finding", "normal")


@dataclass(frozen=True)
class Scored:
    """Scores of uploaded images: the CSV rows ``cxr predict`` would write and, per readable image, its
    preprocessed pixels and probabilities."""

    rows: list[list[str]]
    csv: str
    names: list[str]
    probs: list[np.ndarray | None]
    images: list[np.ndarray | None]
    errors: list[str]


@dataclass(frozen=True)
class Adapted:
    """A run adapted to one new finding in one browser session (never written unless saved)."""

    finding: str
    method: str
    scorer: Any
    column: int
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    ways: int
    #: the decision threshold chosen on the adapted support set (max F1, as ``cxr evaluate --threshold support``)
    threshold: float


class RunService:
    """One run, loaded once per process: its model, card, labels, thresholds and preprocessing."""

    def __init__(self, model_path: Path, device: str = "auto") -> None:
        from cxr_tools.methods.scoring import RunScorer
        from cxr_tools.models import load_model_dir
        from cxr_tools.runtime.devices import resolve_device

        self.device = resolve_device(device)
        self.model, self.meta = load_model_dir(model_path, map_location=self.device)
        self.model.eval()
        self.path = Path(model_path)
        self.training = str(self.meta.get("training"))
        self.ops = model_ops(self.meta)
        labels = [str(x) for x in self.meta.get("labels") or ()]
        n_out = int(self.meta.get("num_classes") or 0)
        self.can_classify = self.training not in NEEDS_SUPPORT and n_out > 0
        self.labels = (
            (labels if len(labels) == n_out else [f"class_{j}" for j in range(n_out)]) if self.can_classify else []
        )
        self.thresholds, self.threshold_rule = run_thresholds(self.meta, self.labels)
        self.scorer = RunScorer(self.model, self.meta, self.device, False, None)

    def describe(self) -> str:
        """One line about the run for the page's header."""
        arch = self.meta.get("architecture")
        size = self.ops.size
        what = f"{len(self.labels)} findings" if self.can_classify else "no finding head (few-shot only)"
        return f"{self.path} · {self.training} run · {arch} at {size} px · {what}"

    # --- decoding -------------------------------------------------------------------------------------------

    def decode(self, path: str | Path) -> np.ndarray:
        """An upload as the run's input: uint8 ``[size, size]`` after the run's preprocessing.

        Raises:
            ImageDecodeError: not an image, broken, DICOM without pixels, or a colour picture (not an X-ray).
        """
        path = Path(path)
        if path.suffix.lower() not in DICOM_EXTENSIONS:
            _refuse_colour(path)
        return load_image(path, self.ops)

    # --- Classify -------------------------------------------------------------------------------------------

    def classify(self, paths: Sequence[str | Path]) -> Scored:
        """Probabilities of every finding for each upload; an unreadable one gets its error (as predict's CSV)."""
        if not self.can_classify:
            raise ModelError(
                f"This is a {self.training} run: it has no fixed finding head and scores findings only relative to "
                "labelled examples.",
                "Use the Few-shot tab: upload a few positive and negative examples of a finding.",
            )
        return self._score_each(paths, lambda img: self.scorer(img[None])[0], self.labels, self.thresholds)

    def cam(self, image: np.ndarray, label: str) -> np.ndarray:
        """The Grad-CAM overlay (RGB) of finding ``label`` on a decoded image."""
        from cxr_tools.models.inputs import to_model_input
        from cxr_tools.models.saliency import overlay, saliency_maps

        if label not in self.labels:
            raise ConfigError(
                f"'{label}' is not one of this run's findings.", f"Pick one of: {', '.join(self.labels)}."
            )
        maps, _ = saliency_maps(
            self.model, to_model_input(image[None], self.meta, self.device), [self.labels.index(label)]
        )
        return overlay(image, maps[0, 0])

    # --- Similarity -----------------------------------------------------------------------------------------

    def similarity(self, a: str | Path, b: str | Path) -> dict[str, Any]:
        """``cxr similarity``'s numbers for two uploads: similarity in [0, 1], distance and its kind."""
        from cxr_tools.models.inputs import to_model_input
        from cxr_tools.models.siamese import score_pair

        images = np.stack([self.decode(a), self.decode(b)])
        x = to_model_input(images, self.meta, self.device)
        return {**score_pair(self.model, self.meta, x), "images": images}

    # --- Few-shot -------------------------------------------------------------------------------------------

    def adapt(
        self, finding: str, positives: Sequence[str | Path], negatives: Sequence[str | Path], seed: int = 0
    ) -> Adapted:
        """Adapt the run to ``finding`` from positive and negative uploads with its own method (``auto``).

        A MAML run meta-trained on 2-way episodes adapts a 2-way task (the finding, and its absence), the form
        its head was meta-learned for; every other run a 1-way task.
        """
        import torch

        from cxr_tools.eval.thresholds import choose_threshold
        from cxr_tools.methods.adapters import AdaptConfig, build_adapter
        from cxr_tools.models.inputs import to_model_input

        finding = check_finding(finding)
        if not positives or not negatives:
            raise InputError(
                f"Adapting to '{finding}' needs positive and negative examples "
                f"({len(positives)} positive, {len(negatives)} negative uploaded).",
                "Upload at least one image with the finding and one without it.",
            )
        images = np.stack([self._decode_named(p) for p in [*positives, *negatives]])
        ways = self._few_shot_ways()
        y = np.zeros((len(images), ways), np.float32)
        y[: len(positives), 0] = 1.0
        if ways == 2:
            y[len(positives) :, 1] = 1.0
        adapter = build_adapter(self.model, self.meta, ways, AdaptConfig(), device=self.device)
        support_x, support_y = to_model_input(images, self.meta, self.device), torch.from_numpy(y).to(self.device)
        scorer = adapter.fit(support_x, support_y, generator=torch.Generator().manual_seed(int(seed)))
        support_scores = scorer.support_scores(support_x, support_y).cpu().numpy()[:, 0]
        threshold = choose_threshold(y[:, 0], support_scores)
        log.info("adapted to '%s' with %s on %d+%d images", finding, adapter.method, len(positives), len(negatives))
        pos = tuple(str(p) for p in positives)
        neg = tuple(str(p) for p in negatives)
        return Adapted(finding, adapter.method, scorer, 0, pos, neg, ways, threshold)

    def score_adapted(self, adapted: Adapted, paths: Sequence[str | Path]) -> Scored:
        """The adapted finding's probability for each query upload (one at a time), errors as in Classify."""
        from cxr_tools.models.inputs import to_model_input

        def score(img: np.ndarray) -> np.ndarray:
            probs = adapted.scorer.predict(to_model_input(img[None], self.meta, self.device)).numpy()
            return probs[0, adapted.column : adapted.column + 1]

        return self._score_each(paths, score, [adapted.finding], {adapted.finding: adapted.threshold})

    def _score_each(
        self,
        paths: Sequence[str | Path],
        score: Callable[[np.ndarray], np.ndarray],
        labels: Sequence[str],
        thresholds: Mapping[str, float] | None,
    ) -> Scored:
        """Decode and score each upload on its own; an unreadable one gets its reason, as in predict's CSV."""
        names: list[str] = []
        probs: list[np.ndarray | None] = []
        images: list[np.ndarray | None] = []
        errors: list[str] = []
        for p in paths:
            names.append(Path(p).name)
            try:
                img = self.decode(p)
            except InputError as exc:
                images.append(None)
                probs.append(None)
                errors.append(str(getattr(exc, "reason", exc)))
                continue
            images.append(img)
            probs.append(score(img))  # one image at a time: no batch effects at all
            errors.append("")
        rows = [format_row(n, pr, e, labels, thresholds) for n, pr, e in zip(names, probs, errors, strict=True)]
        return Scored(rows, csv_text([header(labels, thresholds), *rows]), names, probs, images, errors)

    def save_adapted(self, adapted: Adapted, folder: Path) -> Path:
        """Write ``folder`` so the adaptation can be redone without the page: the support images in the class
        folders ``cxr predict --support`` reads, a ``config.yaml`` for ``cxr predict --config`` and ``run.json``.

        Raises:
            OutputExistsError: ``folder`` exists and is not empty.
        """
        import yaml

        from cxr_tools import __version__
        from cxr_tools.runtime.fs import atomic_write_json, atomic_write_text
        from cxr_tools.runtime.outputs import OutputSpec, prepare, record

        spec = OutputSpec(command="app save", what="few-shot run", writes=("support/",))
        folder = prepare(Path(folder).expanduser(), spec, overwrite=False)
        pos_dir = folder / "support" / _folder_name(adapted.finding)
        neg_dir = folder / "support" / (f"not_{_folder_name(adapted.finding)}" if adapted.ways == 2 else "negative")
        for target, sources in ((pos_dir, adapted.positives), (neg_dir, adapted.negatives)):
            target.mkdir(parents=True)
            for i, src in enumerate(sources):
                record(target / f"{i:03d}_{Path(src).name}")
                shutil.copyfile(src, target / f"{i:03d}_{Path(src).name}")
        model = str(self.path.resolve())
        config = {"predict": {"model": model, "support": str(folder / "support"), "method": adapted.method, "seed": 0}}
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        from datetime import datetime, timezone

        atomic_write_json(
            folder / "run.json",
            {
                "kind": "few-shot",
                "finding": adapted.finding,
                "method": adapted.method,
                "base_model": model,
                "positives": len(adapted.positives),
                "negatives": len(adapted.negatives),
                "ways": adapted.ways,
                "command": f"cxr predict IMAGES -o predictions.csv --config {folder / 'config.yaml'}",
                "tool_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "status": "complete",
            },
        )
        return folder

    def _few_shot_ways(self) -> int:
        if self.training != "maml":
            return 1
        ways = int(self.meta.get("num_classes") or 1)
        if ways > 2:
            raise ModelError(
                f"This MAML run was meta-trained on {ways}-way episodes; the page adapts one finding against its "
                "absence (1- or 2-way).",
                f"Use `cxr predict --support` with {ways} classes, or a run meta-trained with --ways 2.",
            )
        return ways

    def _decode_named(self, path: str | Path) -> np.ndarray:
        try:
            return self.decode(path)
        except ImageDecodeError as exc:
            raise InputError(
                f"{Path(path).name} cannot be read: {exc.reason}.", "Remove it or upload another image."
            ) from None


def run_thresholds(meta: Mapping[str, Any], labels: Sequence[str]) -> tuple[dict[str, float], str]:
    """The run's decision thresholds per finding and how they were chosen: those its training chose on the
    validation split (``model.json`` ``extra.thresholds``), 0.5 for the others."""
    extra = dict(meta.get("extra") or {})
    saved = dict(extra.get("thresholds") or {})
    chosen = {}
    for label in labels:
        value = saved.get(label)
        chosen[label] = float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.5
    if any(isinstance(saved.get(lab), int | float) for lab in labels):
        return chosen, str(extra.get("threshold_rule") or "chosen on the validation split") + " (0.5 where none)"
    return chosen, "0.5 (the run records no thresholds)"


def check_finding(name: str) -> str:
    """A usable name for a new finding (it becomes a CSV column and a support folder)."""
    name = (name or "").strip()
    if not name:
        raise ConfigError("Name the finding to adapt to.", "Type a name, e.g. Pneumothorax.")
    if name.lower() in NEGATIVE_NAMES or len(name) > 64 or not re.search(r"[A-Za-z0-9]", name):
        raise ConfigError(f"'{name[:64]}' cannot name a finding.", "Use letters, digits, spaces, - or _.")
    return name


def _folder_name(finding: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", finding).strip("_")


def _refuse_colour(path: Path) -> None:
    """Refuse a colour picture: an X-ray's channels are (nearly) equal; a photo's are not."""
    import cv2

    try:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return  # load_image reports what is wrong with the file
    if arr is None or arr.ndim != 3 or arr.shape[2] < 3:
        return
    rgb = arr[:, :, :3].astype(np.float32)
    spread = float(np.mean(np.abs(rgb - rgb.mean(axis=2, keepdims=True))))
    scale = 255.0 / 65535.0 if arr.dtype == np.uint16 else 1.0
    if spread * scale > COLOUR_TOLERANCE:
        raise ImageDecodeError(path, "a colour picture, not a grey X-ray")
