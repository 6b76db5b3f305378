"""Engines of ``cxr download``."""

from __future__ import annotations

from cxr_tools.data.synthetic import SyntheticConfig, SyntheticResult, generate
from cxr_tools.runtime.progress import Progress, null_progress


def download_synthetic(config: SyntheticConfig, progress: Progress | None = None) -> SyntheticResult:
    """Write the synthetic phantom dataset described by ``config`` (offline)."""
    return generate(config, null_progress(progress))
