"""Model folders holding only what lineage reads, for the lineage unit tests."""

from __future__ import annotations

import json

from cxr_tools.models.lineage import write_lineage

META = {"training": "supervised", "labels": ["A", "B"], "cache_manifest_hash": "h1", "preprocessing": {"size": 32}}


def make_model(folder, meta, **kw):
    """A model folder holding only what lineage reads: model.json (+ the patients file write_lineage makes)."""
    record = write_lineage(folder, meta, **kw)
    doc = {"format": "cxr-model", "format_version": 1, **meta, "lineage": record}
    (folder / "model.json").write_text(json.dumps(doc))
    return record
