"""Write a tiny, randomly initialised DINOv2 encoder folder, as transformers' ``save_pretrained`` writes a real one.

The phantom benchmark's encoder row (``phantoms.yaml``) scores it with ``--backbone hf:DIR``: it exercises the
foundation-encoder path end to end (load offline, grey images through its processor's contract, frozen features,
same episodes as every other row) on a laptop, without a download. Its weights are random, so its numbers say
nothing about DINOv2; a real run uses the presets (``examples/benchmark/nih.yaml``). The test suite builds its
encoders with the same function.

    python examples/benchmark/tiny_encoder.py cxr-bench/tiny-encoder

Needs ``pip install 'cxr-tools[foundation]'``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DATACARD = "cxr_datacard.json"  # cxr_tools.models.encoders.DATACARD_FILE
RANDOM_CARD = {"title": "tiny random DINOv2 (no training)", "reference": __file__, "data": []}


def save_tiny_dinov2(
    folder: Path,
    *,
    side: int = 28,
    resize: int | None = None,
    mean: tuple[float, ...] = (0.5, 0.4, 0.3),
    std: tuple[float, ...] = (0.2, 0.25, 0.3),
    card: dict[str, Any] | None = RANDOM_CARD,
    seed: int = 0,
) -> Path:
    """A DINOv2 (hidden 32, 2 layers, 2 heads, patch 14) with random weights and its BitImageProcessor (shortest
    side ``resize``, centre crop ``side``, ``mean`` / ``std``) in ``folder``; ``card`` (None: none) becomes its
    data card, so cxr's lineage check knows what it was trained on (here: nothing)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=side
    )
    folder = Path(folder)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": resize or side},
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        image_mean=list(mean),
        image_std=list(std),
    ).save_pretrained(folder)
    if card is not None:
        (folder / DATACARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the encoder (created)")
    parser.add_argument("--side", type=int, default=28, help="input side in pixels (a multiple of 14)")
    args = parser.parse_args()
    print(save_tiny_dinov2(args.folder, side=args.side))


if __name__ == "__main__":
    main()
