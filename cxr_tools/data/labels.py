"""Label spaces of the supported datasets and the canonical names they map to.

Datasets spell the same finding differently (NIH ``Effusion`` vs CheXpert ``Pleural Effusion``, NIH's
``Pleural_Thickening`` with an underscore). Caches store each dataset's own label space; these mappings let
models and comparisons speak one canonical vocabulary, the way TorchXRayVision's ``relabel_dataset`` does.
"""

from __future__ import annotations

from cxr_tools.errors import DataError

# The label spaces and their canonical names live in the lowest layer, so the models layer (lineage) compares
# class names the same way without importing data; re-exported here, where the data layer reads them.
from cxr_tools.vocabulary import CHEXPERT_LABELS as CHEXPERT_LABELS
from cxr_tools.vocabulary import NIH_LABELS, NO_FINDING, canonical_label
from cxr_tools.vocabulary import label_key as label_key

CHEXPERT_META_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")

# Real header of Data_Entry_2017_v2020.csv; the bracketed names contain commas, so rows have 11 fields.
NIH_CSV_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def parse_nih_findings(cell: str, *, source: str = "Finding Labels") -> list[str]:
    """Split an NIH ``Finding Labels`` cell (``Cardiomegaly|Emphysema``) into known NIH labels.

    ``No Finding`` gives an empty list. An unknown name raises :class:`DataError` naming it.
    """
    if cell is None:
        return []
    names = [p.strip() for p in str(cell).split("|") if p.strip()]
    out: list[str] = []
    for name in names:
        if name == NO_FINDING:
            continue
        if name not in NIH_LABELS:
            canon = canonical_label(name)
            if canon in NIH_LABELS:
                name = canon
            else:
                raise DataError(
                    f"Unknown finding '{name}' in {source}.",
                    f"Known NIH findings: {', '.join(NIH_LABELS)}, {NO_FINDING}.",
                )
        if name not in out:
            out.append(name)
    return out


# MetaChest's class-disjoint meta-split (Montalvo-Lezama & Fuentes-Pineda 2026; the mtrn / mval / mtst lists of
# their repository's config.toml), classes spelled as NIH does; docs/science.md. Its meta-train class Lung Opacity
# comes from CheXpert / MIMIC-CXR / PadChest: a cache without it (NIH alone) leaves it out (METACHEST_OPTIONAL).
METACHEST_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("Effusion", "Lung Opacity", "Infiltration", "Atelectasis", "Nodule", "Mass", "Pleural_Thickening"),
    "val": ("Emphysema", "Fibrosis", "Hernia"),
    "test": ("Cardiomegaly", "Edema", "Pneumothorax", "Consolidation", "Pneumonia"),
}
#: MetaChest classes a label space may lack (then left out of the split): NIH has no Lung Opacity.
METACHEST_OPTIONAL: tuple[str, ...] = ("Lung Opacity",)


UNCERTAINTY_POLICIES = ("ignore", "zeros", "ones")


def apply_uncertainty(values, policy: str = "ignore"):  # type: ignore[no-untyped-def]
    """Turn raw label values (1, 0, -1 = uncertain, NaN = not mentioned) into targets and a loss mask.

    Caches store labels raw so one cache serves every policy (Irvin et al. 2019, CheXpert):
    ``ignore`` (U-Ignore) masks uncertain entries out of the loss, ``zeros`` (U-Zeros) and ``ones`` (U-Ones)
    map them to 0 or 1. "Not mentioned" counts as negative, as in the CheXpert paper.

    Args:
        values: array-like [N, L] of raw values.
        policy: one of :data:`UNCERTAINTY_POLICIES`.

    Returns:
        ``(targets, mask)``: float32 [N, L] in {0, 1} and bool [N, L] (False = leave out of the loss).
    """
    import numpy as np

    if policy not in UNCERTAINTY_POLICIES:
        raise DataError(f"Unknown uncertainty policy '{policy}'.", f"Use one of: {', '.join(UNCERTAINTY_POLICIES)}.")
    raw = np.asarray(values, dtype=np.float32)
    uncertain = raw == -1
    targets = np.where(np.isnan(raw), 0.0, raw).astype(np.float32)
    mask = np.ones(raw.shape, dtype=bool)
    if policy == "ignore":
        targets[uncertain] = 0.0
        mask[uncertain] = False
    elif policy == "zeros":
        targets[uncertain] = 0.0
    else:
        targets[uncertain] = 1.0
    return targets, mask
