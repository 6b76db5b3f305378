"""The streaming loop of ``cxr predict``: inputs decoded in chunks on worker processes (results in input order,
a bounded number of chunks in flight) while the parent scores full batches, so memory stays flat and decoding
overlaps inference. A file that cannot be read gets a row with its error instead of probabilities.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tools.data.decoding.for_model import decode_stream, decode_workers
from cxr_tools.data.predict_io.predictions import PredictionsWriter, format_row
from cxr_tools.errors import ModelError
from cxr_tools.runtime.progress import Progress

if TYPE_CHECKING:
    from cxr_tools.data.decoding.imaging import ImageOps
    from cxr_tools.data.predict_io.inputs import InputItem
    from cxr_tools.methods.scoring import RunScorer


def score_into(
    writer: PredictionsWriter,
    todo: Sequence[InputItem],
    scorer: RunScorer,
    ops: ImageOps,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None,
    workers: int | None,
    batch_size: int,
    progress: Progress,
    done: int,
    total: int,
) -> tuple[list[str], float]:
    """Decode and score ``todo`` (``workers`` decoding processes, batches of ``batch_size``), appending each row
    to ``writer`` as soon as it and those before it are known, so an interruption loses no finished row.

    Returns the error of every input of ``todo`` ("" when scored) and the seconds the loop took.
    """
    m = len(todo)
    probs = np.full((m, len(labels)), np.nan, dtype=np.float32)
    errors = [""] * m
    ready = np.zeros(m, dtype=bool)
    next_row = 0
    workers = decode_workers(workers, m, accelerator=scorer.device.type != "cpu")
    chunk = max(1, min(batch_size, 16))
    in_flight = max(2 * workers, math.ceil(batch_size / chunk) + workers)
    pending_pos: list[int] = []
    pending_img: list[np.ndarray] = []
    loop_start = time.perf_counter()

    def flush(task: Any, final: bool) -> None:
        while pending_pos and (final or len(pending_pos) >= batch_size):
            take = min(batch_size, len(pending_pos))
            rows = pending_pos[:take]
            scores = scorer(np.stack(pending_img[:take]))
            if scores.shape != (take, len(labels)):
                raise ModelError(f"Scores of shape {scores.shape} for {take} images and {len(labels)} classes.")
            probs[rows] = scores
            ready[rows] = True
            del pending_pos[:take], pending_img[:take]
            task.advance(take)

    def drain() -> None:
        """Write the rows that are complete, in input order."""
        nonlocal next_row
        first = next_row
        while next_row < m and ready[next_row]:
            next_row += 1
        writer.write(
            [format_row(todo[i].display, probs[i], errors[i], labels, thresholds) for i in range(first, next_row)]
        )

    with progress.task("predict", total=total) as task:
        task.advance(done)
        for start, block, rejected in decode_stream(todo, ops, workers=workers, chunk=chunk, in_flight=in_flight):
            bad = dict(rejected)
            k = 0
            for pos in range(start, min(start + chunk, m)):
                if pos in bad:
                    errors[pos] = bad[pos]
                    ready[pos] = True
                    task.advance(1)
                else:
                    pending_pos.append(pos)
                    pending_img.append(block[k])
                    k += 1
            flush(task, final=False)
            drain()
        flush(task, final=True)
        drain()
    if next_row != m:
        raise RuntimeError(f"{m - next_row} inputs were neither scored nor rejected.")
    return errors, time.perf_counter() - loop_start
