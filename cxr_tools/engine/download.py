"""Engines of ``cxr download``.

Each source's module is imported inside its engine, so one source's import cost (or a source still being built)
never affects the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr_tools.runtime.progress import Progress, null_progress

if TYPE_CHECKING:
    from cxr_tools.data.download.chexpert import ChexpertConfig, ChexpertResult
    from cxr_tools.data.download.kaggle import KaggleConfig, KaggleResult
    from cxr_tools.data.download.nih import NihConfig, NihResult
    from cxr_tools.data.synthetic import SyntheticConfig, SyntheticResult


def download_synthetic(config: SyntheticConfig, progress: Progress | None = None) -> SyntheticResult:
    """Write the synthetic phantom dataset described by ``config`` (offline)."""
    from cxr_tools.data.synthetic import generate

    return generate(config, null_progress(progress))


def download_nih(config: NihConfig, progress: Progress | None = None) -> NihResult:
    """Download, MD5-verify and safely extract NIH ChestX-ray14 archives (and metadata) into ``config.dest``.

    Parts already complete are skipped without a network call; failures of single parts are reported in the
    result (``failed``), not raised.
    """
    from cxr_tools.data.download.nih import download_nih as run

    return run(config, null_progress(progress))


def download_kaggle(config: KaggleConfig, progress: Progress | None = None) -> KaggleResult:
    """Fetch the Kaggle mirror of NIH ChestX-ray14 with kagglehub (or take ``from_dir``) and install it."""
    from cxr_tools.data.download.kaggle import download_kaggle as run

    return run(config, null_progress(progress))


def download_chexpert(config: ChexpertConfig, progress: Progress | None = None) -> ChexpertResult:
    """Fetch (signed URL) or take (local file) the CheXpert archive, extract it safely and check its CSVs."""
    from cxr_tools.data.download.chexpert import download_chexpert as run

    return run(config, null_progress(progress))
