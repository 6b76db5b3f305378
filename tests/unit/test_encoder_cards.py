"""Foundation-encoder names and data cards (no torch, no files): presets by name or repo id, the cards the lineage
check reads, and what it concludes from them for an encoder evaluated without a run."""

from __future__ import annotations

import json

from cxr_tools.models.datacards import card_record
from cxr_tools.models.encoders import DATACARD_FILE, PRESETS, encoder_source, is_encoder, preset_of
from cxr_tools.models.lineage import encoder_record, find_leak, pretraining_notes
from cxr_tools.vocabulary import NIH_LABELS


def _meta(name: str) -> dict:
    return {"training": "encoder", "lineage": encoder_record(name, encoder_source(name))}


def test_presets_are_named_by_name_or_repo_id_and_hf_names_are_encoders():
    assert set(PRESETS) == {"rad-dino", "medsiglip", "biomedclip", "dinov2-small", "dinov2-base", "siglip"}
    assert (
        preset_of("hf:microsoft/rad-dino") is PRESETS["rad-dino"] and encoder_source("rad-dino") == "microsoft/rad-dino"
    )
    assert is_encoder("hf:/models/x") and is_encoder("siglip") and not is_encoder("resnet18") and not is_encoder(None)
    assert preset_of("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224") is PRESETS["biomedclip"]
    assert preset_of("hf:/models/x") is None and PRESETS["biomedclip"].library == "open_clip"


def test_rad_dino_saw_nih_and_chexpert_images_without_labels():
    card = card_record("rad-dino")
    assert card["name"] == "rad-dino" and all(not d["classes"] for d in card["data"])
    assert {d["source"] for d in card["data"]} >= {"nih", "chexpert"}
    meta = _meta("rad-dino")
    assert find_leak(meta, {}, NIH_LABELS[:3], ["00000001"]) is None  # no classes, no patients of any cache
    notes = pretraining_notes(meta, {"kind": "nih"})
    assert len(notes) == 1 and "NIH ChestX-ray14" in notes[0] and notes[0].startswith("the encoder is RAD-DINO")
    assert pretraining_notes(_meta("dinov2-base"), {"kind": "nih"}) == []


def test_a_folder_card_is_read_and_a_folder_without_one_cannot_be_checked(tmp_path):
    assert "no data card" in find_leak(_meta(f"hf:{tmp_path}"), {}, ["Mass"], [])
    card = {"title": "in-house", "data": [{"dataset": "ours", "source": "dicom", "classes": ["Mass", "Nodule"]}]}
    (tmp_path / DATACARD_FILE).write_text(json.dumps(card))
    leak = find_leak(_meta(f"hf:{tmp_path}"), {}, ["Mass", "Hernia"], [])
    assert "in-house" in leak and "Mass" in leak and "Hernia" not in leak
    assert find_leak(_meta(f"hf:{tmp_path}"), {}, ["Hernia"], []) is None
