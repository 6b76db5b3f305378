"""The predictions CSV of ``cxr predict``, written as it goes so an interrupted run resumes where it stopped.

Rows are appended in input order to a hidden ``.<name>.partial`` file beside the output (flushed after every
batch, so a ``kill -9`` or a SLURM time limit loses at most the batch in flight) and the file is renamed to the
output only when every input has its row: a file at the output path is always complete. A sidecar
``.<name>.partial.json`` records what the rows depend on (the model's weights checksum, the support set, the
thresholds, the list of inputs, ...); a rerun with the same settings continues after the last complete row, a
rerun with other settings is refused rather than mixing two models' scores in one file.

The ``<label>_pred`` columns use the thresholds :func:`~cxr_tools.eval.thresholds.resolve_thresholds` chose;
the rule and the values are written beside the CSV as ``<name>.thresholds.json`` (:func:`thresholds_path`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tools.config import differing_keys
from cxr_tools.data.predict_io.inputs import InputItem
from cxr_tools.errors import OutputExistsError
from cxr_tools.runtime.fs import atomic_write_json, complete_lines, fsync_dir

log = logging.getLogger(__name__)

DECIMALS = 6


def thresholds_path(output: Path) -> Path:
    """Where the thresholds of ``output`` are written: ``preds.csv`` -> ``preds.thresholds.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.thresholds.json")


def header(labels: Sequence[str], thresholds: Mapping[str, float] | None) -> list[str]:
    """``path``, one column per label, ``<label>_pred`` for the thresholded labels, ``error`` (docs/design.md)."""
    return ["path", *labels, *(f"{label}_pred" for label in pred_labels(labels, thresholds)), "error"]


def pred_labels(labels: Sequence[str], thresholds: Mapping[str, float] | None) -> list[str]:
    return [label for label in labels if thresholds and label in thresholds]


def format_row(
    display: str,
    probs: np.ndarray | None,
    error: str,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None,
) -> list[str]:
    """One CSV row: a failed input has empty probabilities and its error."""
    pred_cols = pred_labels(labels, thresholds)
    if error or probs is None:
        return [display, *([""] * (len(labels) + len(pred_cols))), error]
    # the decision uses the value as written, so a reader of the CSV can reproduce every _pred cell
    rounded = [round(float(p), DECIMALS) for p in probs]
    cells = [f"{p:.{DECIMALS}f}" for p in rounded]
    index = {label: j for j, label in enumerate(labels)}
    preds = [str(int(rounded[index[label]] >= thresholds[label])) for label in pred_cols] if thresholds else []
    return [display, *cells, *preds, ""]


def csv_text(rows: Iterable[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def fingerprint_inputs(items: Sequence[InputItem]) -> str:
    """A checksum of the input list in order: a resumed run must be scoring the same inputs."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.display.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def fingerprint_path(path: Path | None) -> list[Any] | None:
    """Name, size and modification time of a support file, or of every file under a support folder."""
    if path is None:
        return None
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return [str(path.resolve()), digest.hexdigest()]


class PredictionsWriter:
    """Appends rows to the partial file, resuming one left by an interrupted run with the same settings.

    Attributes:
        resumed_rows: the rows found complete in an earlier run's partial file (``path`` ... ``error`` cells).
    """

    def __init__(
        self,
        output: Path,
        columns: Sequence[str],
        settings: Mapping[str, Any],
        items: Sequence[InputItem],
        *,
        resume: bool,
    ) -> None:
        self.output = Path(output)
        self.partial = self.output.with_name(f".{self.output.name}.partial")
        self.sidecar = self.output.with_name(f".{self.output.name}.partial.json")
        self.columns = list(columns)
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.resumed_rows: list[list[str]] = []
        kept = self._resumable(items) if resume else None
        if kept is None:
            self._start()
        else:
            self.resumed_rows = kept
        self._file = open(self.partial, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by finish/close)

    # -- resume --------------------------------------------------------------------------------------------

    def _resumable(self, items: Sequence[InputItem]) -> list[list[str]] | None:
        """The complete rows of an earlier run with the same settings; None when there is nothing to resume."""
        if not (self.sidecar.is_file() and self.partial.is_file()):
            return None
        try:
            recorded = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s is unreadable; starting the predictions over.", self.sidecar)
            return None
        differ = differing_keys(recorded, self.settings)
        if differ:
            raise OutputExistsError(
                f"{self.output} has an interrupted run made with other settings ({', '.join(differ)} differ).",
                "Rerun with the same settings to resume it, or pass --no-resume to start over.",
            )
        complete = complete_lines(self.partial)  # a row cut mid-write by kill -9 is scored again
        rows = list(csv.reader(io.StringIO(complete.decode("utf-8", "surrogateescape"))))
        if not rows or rows[0] != self.columns:
            log.warning("%s does not start with the expected header; starting the predictions over.", self.partial)
            return None
        rows = rows[1:]
        if len(rows) > len(items) or any(r[0] != it.display for r, it in zip(rows, items, strict=False)):
            log.warning("%s lists other inputs than this run; starting the predictions over.", self.partial)
            return None
        return rows

    def _start(self) -> None:
        self.partial.write_text(csv_text([self.columns]), encoding="utf-8")
        atomic_write_json(self.sidecar, self.settings)

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, rows: Sequence[Sequence[str]]) -> None:
        """Append rows and hand them to the OS: a killed process loses none of them."""
        if rows:
            self._file.write(csv_text(rows))
            self._file.flush()

    def finish(self) -> Path:
        """Make the complete file the output (atomic rename) and remove the sidecar."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.output)
        self.sidecar.unlink(missing_ok=True)
        fsync_dir(self.output.parent)
        return self.output

    def close(self) -> None:
        """Leave the partial file for a rerun (an error or an interruption)."""
        if not self._file.closed:
            self._file.close()
