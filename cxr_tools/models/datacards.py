"""Data cards of the external weights a model can start from: which datasets trained them, and which classes
their labels taught them (docs/science.md, "lineage").

A few-shot score is honest only if nothing the model started from learned a meta-test class. For runs of this
tool the lineage records that (:mod:`cxr_tools.models.lineage`); for weights trained elsewhere (torchvision's
ImageNet, TorchXRayVision) these cards say it, and each run copies the card of its starting weights into its
lineage record, so the answer travels with the run.

Facts from TorchXRayVision's ``models.py`` (``model_urls``: each weight set's file, its description and its
18 output ``labels``, blank where a dataset has no such finding) and ``datasets.py`` (which findings each
dataset is relabelled to): the "all" DenseNet was trained on NIH ChestX-ray14 (with Google's radiologist
relabels of NIH images), PadChest, CheXpert, MIMIC-CXR, OpenI and RSNA Pneumonia ("kaggle" in its file name);
SIIM pneumothorax and VinDr-CXR only entered its 512 px ResNet, which is not in the zoo. Class names are
canonical (:func:`cxr_tools.vocabulary.canonical_label`): NIH spelling where NIH has the finding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cxr_tools.vocabulary import NIH_LABELS


@dataclass(frozen=True)
class TrainingData:
    """One dataset behind a weight set.

    Attributes:
        dataset: its name, as a reader would look it up.
        source: the cache source kind its images arrive as in this tool (``nih``, ``chexpert``; empty when no
            source reads it), so an evaluation can say that the encoder has seen the very images it is scored on.
        classes: the findings whose labels trained the weights (empty: images only, or no chest findings).
        chest_xray: whether the images are chest X-rays.
    """

    dataset: str
    source: str
    classes: tuple[str, ...]
    chest_xray: bool = True


@dataclass(frozen=True)
class DataCard:
    """What a weight set was trained on.

    Attributes:
        name: the weight source name (``create_model(..., weights=NAME)``).
        title: the upstream name of the weights.
        reference: where the facts come from.
        data: every dataset that trained them.
    """

    name: str
    title: str
    reference: str
    data: tuple[TrainingData, ...]

    def classes(self) -> list[str]:
        """Every class the weights learned from labels, sorted."""
        return sorted({c for d in self.data for c in d.classes})

    def record(self) -> dict[str, Any]:
        """The card as a JSON value, the form a lineage record stores."""
        return {
            "name": self.name,
            "title": self.title,
            "reference": self.reference,
            "data": [
                {"dataset": d.dataset, "source": d.source, "classes": list(d.classes), "chest_xray": d.chest_xray}
                for d in self.data
            ],
        }


_XRV_REF = "TorchXRayVision (Cohen et al., MIDL 2022; arXiv:2111.00595), models.py model_urls"
# The 14 NIH findings and the CheXpert-labeller findings, as TorchXRayVision relabels them onto its 18 outputs.
_CHEXPERT_18 = (
    "Atelectasis",
    "Consolidation",
    "Pneumothorax",
    "Edema",
    "Effusion",
    "Pneumonia",
    "Cardiomegaly",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
_NIH = TrainingData("NIH ChestX-ray14", "nih", NIH_LABELS)
_GOOGLE = TrainingData(
    "NIH ChestX-ray14, Google radiologist relabels",
    "nih",
    ("Fracture", "Pneumothorax", "Lung Opacity", "Nodule", "Mass"),
)
_PADCHEST = TrainingData("PadChest", "", (*NIH_LABELS, "Fracture"))
_CHEXPERT = TrainingData("CheXpert", "chexpert", _CHEXPERT_18)
_MIMIC_CH = TrainingData("MIMIC-CXR (CheXpert labeller)", "", _CHEXPERT_18)
_MIMIC_NB = TrainingData("MIMIC-CXR (NegBio labeller)", "", _CHEXPERT_18)
_OPENI = TrainingData(
    "OpenI (Indiana University)",
    "",
    (
        "Atelectasis",
        "Fibrosis",
        "Pneumonia",
        "Effusion",
        "Lung Lesion",
        "Cardiomegaly",
        "Fracture",
        "Edema",
        "Emphysema",
        "Hernia",
        "Mass",
        "Nodule",
        "Lung Opacity",
        "Infiltration",
        "Pleural_Thickening",
        "Pneumothorax",
    ),
)
_RSNA = TrainingData("RSNA Pneumonia Detection Challenge (Kaggle)", "", ("Pneumonia", "Lung Opacity"))

IMAGENET = DataCard(
    "imagenet",
    "torchvision ImageNet-1k",
    "torchvision weight enums (IMAGENET1K_V1 / V2)",
    (TrainingData("ImageNet-1k (ILSVRC 2012)", "", (), chest_xray=False),),
)
XRV_ALL = DataCard(
    "xrv",
    "TorchXRayVision densenet121-res224-all",
    _XRV_REF,
    (_NIH, _GOOGLE, _PADCHEST, _CHEXPERT, _MIMIC_CH, _OPENI, _RSNA),
)
# TorchXRayVision's single-dataset DenseNets: weight name in this tool -> (upstream name, dataset).
XRV_SINGLE: dict[str, tuple[str, TrainingData]] = {
    "xrv-nih": ("densenet121-res224-nih", _NIH),
    "xrv-pc": ("densenet121-res224-pc", _PADCHEST),
    "xrv-chex": ("densenet121-res224-chex", _CHEXPERT),
    "xrv-mimic_ch": ("densenet121-res224-mimic_ch", _MIMIC_CH),
    "xrv-mimic_nb": ("densenet121-res224-mimic_nb", _MIMIC_NB),
    "xrv-rsna": ("densenet121-res224-rsna", _RSNA),
}
CARDS: dict[str, DataCard] = {
    IMAGENET.name: IMAGENET,
    XRV_ALL.name: XRV_ALL,
    **{name: DataCard(name, f"TorchXRayVision {up}", _XRV_REF, (d,)) for name, (up, d) in XRV_SINGLE.items()},
}


def card_record(weights: str | None) -> dict[str, Any] | None:
    """The data card of weight source ``weights`` as a lineage record stores it: None for random
    initialisation; a foundation encoder's card (:mod:`cxr_tools.models.encoders`) for ``hf:`` / preset names;
    ``{"name": ..., "data": None}`` for weights without a card (evaluation cannot check them)."""
    if weights in (None, "", "none"):
        return None
    card = CARDS.get(str(weights))
    if card is not None:
        return card.record()
    from cxr_tools.models.encoders import encoder_card, is_encoder

    encoder = encoder_card(str(weights)) if is_encoder(str(weights)) else None
    return encoder if encoder is not None else {"name": str(weights), "data": None}


def recorded_classes(record: Mapping[str, Any]) -> list[str]:
    """The labelled classes of a stored card (:meth:`DataCard.record`)."""
    return sorted({str(c) for d in record.get("data") or [] for c in d.get("classes") or []})


def describe(record: Mapping[str, Any]) -> str:
    """How a refusal names stored weights: ``TITLE weights (N training datasets, data card in model.json)``."""
    n = len({str(d.get("dataset")) for d in record.get("data") or []})
    return f"{record.get('title') or record.get('name')} weights ({n} training dataset(s), data card in model.json)"
