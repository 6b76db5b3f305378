"""Foundation encoders by name: the ``hf:`` backbone syntax, the named presets and their data cards (no torch).

``--backbone hf:PATH_OR_REPO_ID`` names a vision encoder published on Hugging Face (a local directory holding its
files, or a repo id found in the local Hugging Face cache); ``--backbone rad-dino`` and the other presets below are
short names for the repo ids a reviewer expects to see. :mod:`cxr_tools.models.foundation` loads them with their
own libraries; this module only says what they are, so ``cxr models`` and the lineage check need neither torch nor
transformers.

Each preset carries a :class:`~cxr_tools.models.datacards.DataCard`: what its weights were trained on, and whether
labels took part. Self-supervised and image-text encoders learned no class labels (``classes`` empty), so they never
leak a meta-test class; but an encoder that has seen the *images* of the evaluated dataset (RAD-DINO saw NIH
ChestX-ray14 and CheXpert) is named in every evaluation output (:func:`~cxr_tools.models.lineage.pretraining_notes`).
A local encoder folder may carry its own card as :data:`DATACARD_FILE` (the :meth:`DataCard.record` layout);
without one, evaluating it is refused as unverifiable unless ``--allow-leak``.

Facts and where they come from (model cards on huggingface.co, read 2026-12): RAD-DINO (microsoft/rad-dino, "Model
card for RAD-DINO": a DINOv2 ViT-B/14 "finetuned from dinov2-base", self-supervised on chest X-rays "from three
countries"; the card's training-data table lists MIMIC-CXR, CheXpert, NIH-CXR, PadChest and BRAX, images only; CLS
token as the image embedding), MedSigLIP (google/medsiglip-448 and developers.google.com/health-ai-developer-
foundations/medsiglip/model-card: 400M-parameter vision tower, 448x448 input, "de-identified medical image and text
pairs, including chest X-rays ... along with associated descriptions or reports", combined with natural image-text
pairs; the card does not itemise the chest X-ray datasets), BiomedCLIP (microsoft/BiomedCLIP-PubMedBERT_256-vit_
base_patch16_224, MIT, open_clip: "pretrained on PMC-15M, a dataset of 15 million figure-caption pairs extracted from
biomedical research articles in PubMed Central"), DINOv2 (facebook/dinov2-*, Apache-2.0: self-supervised on the
curated LVD-142M web images, Oquab et al. 2023) and SigLIP (google/siglip-base-patch16-224, Apache-2.0: WebLI
image-text pairs, Zhai et al. 2023).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_tools.models.datacards import DataCard, TrainingData

PREFIX = "hf:"
#: open_clip's spelling of a Hugging Face repo, accepted as a synonym of ``hf:``.
HUB_PREFIX = "hf-hub:"
#: A data card a local encoder folder may hold (``DataCard.record()`` layout: title, reference, data).
DATACARD_FILE = "cxr_datacard.json"


@dataclass(frozen=True)
class EncoderPreset:
    """A named foundation encoder.

    Attributes:
        name: the ``--backbone`` name.
        repo: its Hugging Face repo id.
        library: ``transformers`` or ``open_clip`` (the format it is published in).
        licence: the licence its model card states.
        image_size: the side its image processor feeds the network.
        input: the input contract in words (resize, crop, mean / std; grey images are replicated to 3 channels).
        embedding_size: the size of its image embedding.
        embedding: which output is the embedding.
        params: vision-tower parameters (approximate, from the model card or architecture).
        card: what it was trained on.
    """

    name: str
    repo: str
    library: str
    licence: str
    image_size: int
    input: str
    embedding_size: int
    embedding: str
    params: str
    card: DataCard


def _images(dataset: str, source: str = "", chest_xray: bool = True) -> TrainingData:
    return TrainingData(dataset, source, (), chest_xray)


_LVD = _images("LVD-142M (curated web images, self-supervised, no labels)", chest_xray=False)
_RAD_DINO_REF = "huggingface.co/microsoft/rad-dino model card (Perez-Garcia et al., Nat. Mach. Intell. 2025)"
PRESETS: dict[str, EncoderPreset] = {
    p.name: p
    for p in (
        EncoderPreset(
            "rad-dino",
            "microsoft/rad-dino",
            "transformers",
            "MIT (earlier revisions: MSRLA), research use only",
            518,
            "resize shortest side 518, centre crop 518, its processor's mean / std",
            768,
            "CLS token after the final layer norm (pooler_output)",
            "87M (ViT-B/14)",
            DataCard(
                "rad-dino",
                "RAD-DINO (microsoft/rad-dino)",
                _RAD_DINO_REF,
                (
                    _images("MIMIC-CXR (images only, self-supervised)"),
                    _images("CheXpert (images only, self-supervised)", "chexpert"),
                    _images("NIH ChestX-ray14 (images only, self-supervised)", "nih"),
                    _images("PadChest (images only, self-supervised)"),
                    _images("BRAX (images only, self-supervised)"),
                    _LVD,  # its starting point, dinov2-base
                ),
            ),
        ),
        EncoderPreset(
            "medsiglip",
            "google/medsiglip-448",
            "transformers",
            "Health AI Developer Foundations terms of use (gated)",
            448,
            "resize to 448x448, mean / std 0.5",
            1152,
            "SigLIP attention-pooled vision output (get_image_features)",
            "400M (SigLIP So400m vision tower)",
            DataCard(
                "medsiglip",
                "MedSigLIP (google/medsiglip-448)",
                "huggingface.co/google/medsiglip-448 and the HAI-DEF MedSigLIP model card",
                (
                    _images("de-identified chest X-rays with their reports (image-text pairs; datasets not itemised)"),
                    _images(
                        "de-identified dermatology, ophthalmology, histopathology, CT and MRI images with text",
                        chest_xray=False,
                    ),
                    _images("natural image-text pairs", chest_xray=False),
                ),
            ),
        ),
        EncoderPreset(
            "biomedclip",
            "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "open_clip",
            "MIT, research use only",
            224,
            "resize shortest side 224 (bicubic), centre crop 224, CLIP mean / std",
            512,
            "projected image embedding (open_clip encode_image, not normalised)",
            "86M (ViT-B/16)",
            DataCard(
                "biomedclip",
                "BiomedCLIP (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)",
                "huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (Zhang et al. 2023, "
                "arXiv:2303.00915)",
                (_images("PMC-15M (15M figure-caption pairs from PubMed Central articles, no labels)"),),
            ),
        ),
        *(
            EncoderPreset(
                f"dinov2-{size}",
                f"facebook/dinov2-{size}",
                "transformers",
                "Apache-2.0",
                224,
                "resize shortest side 256 (bicubic), centre crop 224, ImageNet mean / std",
                width,
                "CLS token after the final layer norm (pooler_output)",
                params,
                DataCard(
                    f"dinov2-{size}",
                    f"DINOv2 ViT-{size[0].upper()}/14 (facebook/dinov2-{size})",
                    "huggingface.co/facebook/dinov2-* (Oquab et al. 2023, arXiv:2304.07193)",
                    (_LVD,),
                ),
            )
            for size, width, params in (("small", 384, "22M (ViT-S/14)"), ("base", 768, "86M (ViT-B/14)"))
        ),
        EncoderPreset(
            "siglip",
            "google/siglip-base-patch16-224",
            "transformers",
            "Apache-2.0",
            224,
            "resize to 224x224, mean / std 0.5",
            768,
            "SigLIP attention-pooled vision output (get_image_features)",
            "93M (ViT-B/16)",
            DataCard(
                "siglip",
                "SigLIP ViT-B/16 (google/siglip-base-patch16-224)",
                "huggingface.co/google/siglip-base-patch16-224 (Zhai et al. 2023, arXiv:2303.15343)",
                (_images("WebLI (web image-text pairs, no labels)", chest_xray=False),),
            ),
        ),
    )
}
_BY_REPO = {p.repo.lower(): p for p in PRESETS.values()}


def is_encoder(name: str | None) -> bool:
    """Whether ``name`` is an ``hf:`` (or open_clip's ``hf-hub:``) backbone or a preset."""
    return bool(name) and (str(name).startswith((PREFIX, HUB_PREFIX)) or str(name) in PRESETS)


def encoder_source(name: str) -> str:
    """What to load for ``name``: a preset's repo id, else the text after ``hf:`` (a folder or a repo id)."""
    if name in PRESETS:
        return PRESETS[name].repo
    for prefix in (PREFIX, HUB_PREFIX):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def preset_of(name: str) -> EncoderPreset | None:
    """The preset ``name`` is, or names by repo id (``hf:microsoft/rad-dino``); None for other encoders."""
    if name in PRESETS:
        return PRESETS[name]
    return _BY_REPO.get(encoder_source(name).strip("/").lower())


def encoder_card(name: str) -> dict[str, Any] | None:
    """The data card of encoder ``name`` as a lineage record stores it: the preset's, else the
    :data:`DATACARD_FILE` of a local folder, else None (unknown: evaluation cannot check it)."""
    preset = preset_of(name)
    if preset is not None:
        return {**preset.card.record(), "name": name}
    folder = Path(encoder_source(name)).expanduser()
    path = folder / DATACARD_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return None
    card = DataCard(
        name,
        str(doc.get("title") or name),
        str(doc.get("reference") or str(path)),
        tuple(
            TrainingData(
                str(d.get("dataset")),
                str(d.get("source") or ""),
                tuple(str(c) for c in d.get("classes") or ()),
                bool(d.get("chest_xray", True)),
            )
            for d in data
            if isinstance(d, dict)
        ),
    )
    return card.record()
