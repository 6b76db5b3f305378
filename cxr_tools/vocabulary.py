"""The finding vocabulary every layer shares: the NIH and CheXpert label spaces and the canonical names of
their findings, as plain strings (no pandas, no torch).

It sits below ``data`` and ``models`` because both compare class names: the data layer maps a dataset's
spelling to the canonical one (:mod:`cxr_tools.data.labels` re-exports these names), and model lineage
(:mod:`cxr_tools.models.lineage`) asks whether a class a model trained on is one of the meta-test classes, which
must not depend on how two datasets, or a user, spelled it (``PNEUMONIA`` / ``Pneumonia``, ``Effusion`` /
``Pleural Effusion``, ``Pleural_Thickening`` / ``Pleural Thickening``).
"""

from __future__ import annotations

import re

NO_FINDING = "No Finding"

# NIH ChestX-ray14, in the order of the dataset paper; "No Finding" is the absence of all 14.
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

# CheXpert's 14 observation columns, in train.csv order (after Path,Sex,Age,Frontal/Lateral,AP/PA).
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# Dataset spelling -> canonical name. Canonical names follow NIH where both datasets have the finding.
_ALIASES: dict[str, str] = {
    "pleural effusion": "Effusion",
    "effusion": "Effusion",
    "pleural_thickening": "Pleural_Thickening",
    "pleural thickening": "Pleural_Thickening",
    "pleural-thickening": "Pleural_Thickening",
    "no finding": NO_FINDING,
    "no_finding": NO_FINDING,
    "normal": NO_FINDING,
    "lung lesion": "Lung Lesion",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
    "lung opacity": "Lung Opacity",
    "pleural other": "Pleural Other",
    "support devices": "Support Devices",
}
for _name in NIH_LABELS + CHEXPERT_LABELS:
    _ALIASES.setdefault(_name.lower(), _name)
    _ALIASES.setdefault(_name.lower().replace("_", " "), _name)


def canonical_label(name: str) -> str:
    """The canonical spelling of a finding name from any supported dataset (case-insensitive).

    Unknown names are returned stripped but otherwise unchanged, so folder datasets can bring their own
    classes (e.g. ``PNEUMONIA``).
    """
    key = name.strip().lower()
    return _ALIASES.get(key, _ALIASES.get(key.replace("_", " "), name.strip()))


_SEPARATORS = re.compile(r"[\s_\-]+")


def label_key(name: str) -> str:
    """The key two class names are compared by: the canonical name (:func:`canonical_label`), case-folded, with
    runs of spaces, underscores and hyphens made one space, so names that differ only in spelling are equal
    (``label_key("PNEUMONIA") == label_key("Pneumonia")``, ``label_key("Pleural Effusion") == "effusion"``)."""
    return _SEPARATORS.sub(" ", canonical_label(str(name))).strip().casefold()
