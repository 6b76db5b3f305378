"""Dataset downloads: NIH ChestX-ray14 archives, its Kaggle mirror, CheXpert.

``http`` (resumable, retried, MD5-verified fetches), ``archives`` (safe extraction), ``state`` (completion
markers, reports, inventory), and one module per source: ``nih``, ``metadata``, ``kaggle``, ``chexpert``.
"""

from __future__ import annotations

from cxr_tools.data.download.chexpert import ChexpertConfig, ChexpertResult, download_chexpert
from cxr_tools.data.download.kaggle import KaggleConfig, KaggleResult, download_kaggle
from cxr_tools.data.download.nih import NihConfig, NihResult, download_nih, parse_parts

__all__ = [
    "ChexpertConfig",
    "ChexpertResult",
    "KaggleConfig",
    "KaggleResult",
    "NihConfig",
    "NihResult",
    "download_chexpert",
    "download_kaggle",
    "download_nih",
    "parse_parts",
]
