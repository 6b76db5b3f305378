"""Images as a trained model expects them: its recorded preprocessing, decoded by ``cxr preprocess``'s own code.

``model.json`` records the cache manifest's preprocessing (``input.preprocessing``, an
:class:`~cxr_tools.data.decoding.imaging.ImageOps`); :func:`model_ops` reads it back and :func:`decode_stream` decodes
files with :func:`~cxr_tools.data.decoding.pipeline.process_chunk`, the function that filled the cache. So a
file seen through ``cxr predict`` or ``cxr similarity`` reaches the model as exactly the pixels it would have had
after ``cxr preprocess``. The model card is read as a plain mapping: ``data`` never imports ``models``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cxr_tools.data.decoding.imaging import ImageOps
from cxr_tools.data.predict_io.inputs import InputItem
from cxr_tools.errors import ModelError, ResourceError

log = logging.getLogger(__name__)

#: ``preprocessing`` keys of a cache manifest that describe what :func:`~cxr_tools.data.decoding.imaging.load_image`
#: always does.
_IMPLIED_OPS = {"grayscale": True, "interpolation": "area"}


def model_ops(meta: Mapping[str, Any]) -> ImageOps:
    """The :class:`ImageOps` a model was trained with (``model.json`` ``input.preprocessing``).

    Falls back to default operations at the model's image size, with a warning, when the card has none.
    """
    contract = meta.get("input") or {}
    recorded = dict(contract.get("preprocessing") or {})
    size = int(contract.get("image_size") or 0)
    if not recorded:
        fallback = ImageOps(size=size) if size else ImageOps()
        log.warning(
            "%s records no preprocessing; using default operations at %d px (%s). Predictions may differ from "
            "what the model saw in training.",
            meta.get("path", "the model"),
            fallback.size,
            ", ".join(f"{k}={v}" for k, v in fallback.to_dict().items()),
        )
        return fallback
    for key, value in _IMPLIED_OPS.items():
        if key in recorded and recorded.pop(key) != value:
            raise ModelError(
                f"{meta.get('path', 'The model')} was trained with {key}={value!r}, which predict cannot reproduce.",
                "Retrain on a cache made by this version of `cxr preprocess`.",
            )
    ops = ImageOps.from_dict(recorded)
    if size and ops.size != size:
        raise ModelError(f"{meta.get('path')} records {ops.size} px preprocessing for a {size} px input.")
    return ops


def decode_stream(
    items: Sequence[InputItem], ops: ImageOps, *, workers: int, chunk: int = 16, in_flight: int | None = None
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, str]]]]:
    """Decode ``items`` with ``ops`` in input order: yields ``(start, images, rejected)`` per chunk.

    ``images`` holds the readable inputs of the chunk (uint8 ``[k, size, size]``) in order; ``rejected`` the
    ``(position, reason)`` of the others. The decoding is ``cxr preprocess``'s own.
    """
    from cxr_tools.data.decoding.pipeline import ChunkTask, ordered_map, process_chunk

    paths = [it.path for it in items]
    tasks = (ChunkTask(s, tuple(paths[s : s + chunk]), ops) for s in range(0, len(paths), chunk))
    try:
        for res in ordered_map(process_chunk, tasks, workers, in_flight=in_flight):
            yield res.start, res.images, list(res.rejected)
    except ResourceError as exc:
        raise ResourceError(
            "A decoding worker process died (killed for memory, a decoder crashing on a file, or, from Python, "
            "a main script without an `if __name__ == '__main__':` guard).",
            "Rerun with fewer --workers, or with --workers 0 to find the file in the traceback (CXR_DEBUG=1).",
        ) from exc


def decode_workers(requested: int | None, n: int, *, accelerator: bool) -> int:
    """Decoding processes: ``requested`` when given; else none for fewer than 64 inputs (a pool start costs more),
    every core when an accelerator computes, and a quarter of the cores on a CPU device, whose forward pass's
    threads already use every core (none on up to 3 cores, where benchmarks/predict.py measured in-process
    decoding as fast as 2 workers)."""
    if requested is not None:
        return requested
    from cxr_tools.data.decoding.pipeline import available_cores

    if n < 64:
        return 0
    cores = available_cores()
    return cores if accelerator else cores // 4
