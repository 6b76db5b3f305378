"""The built-in synthetic chest X-ray phantom dataset (docs/science.md).

A learnable, offline stand-in for NIH ChestX-ray14 and CheXpert, written in their real on-disk layouts:
per-patient anatomy (thorax, lungs, heart and mediastinum, ribs, diaphragm, clavicles) shared by a patient's
follow-ups, the 14 NIH findings each with its own localised signature, NIH-shaped label frequencies with
co-occurrence, pose, exposure and noise. Same configuration, same bytes.

Modules: :mod:`.anatomy` (patient shape and static layers), :mod:`.findings` (finding signatures),
:mod:`.render` (one film), :mod:`.plan` (patients, labels, metadata, splits), :mod:`.writers` (PNG, JPEG,
DICOM, CSVs), :mod:`.worker` (rendering loop), :mod:`.generator` (``generate``).
"""

from __future__ import annotations

from cxr_tools.data.synthetic.generator import (
    CHEXPERT_ROOT,
    FORMATS,
    LAYOUTS,
    MANIFEST,
    NIH_CSV,
    SyntheticConfig,
    SyntheticResult,
    generate,
)

__all__ = [
    "CHEXPERT_ROOT",
    "FORMATS",
    "LAYOUTS",
    "MANIFEST",
    "NIH_CSV",
    "SyntheticConfig",
    "SyntheticResult",
    "generate",
]
