"""Pieces evaluate, compare, predict and the prototype method share instead of keeping copies."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cxr_tools.config import fields_from
from cxr_tools.engine.compare.output import COMPARISON_FILES, write_comparison
from cxr_tools.errors import OutputExistsError
from cxr_tools.methods.prototypes import embedding_function
from cxr_tools.models import create_model
from cxr_tools.models.siamese import embedder


@dataclass(frozen=True)
class _Part:
    size: int = 8
    crop: str = "center"
    extra: float = 1.5


@dataclass(frozen=True)
class _Whole:
    size: int
    crop: str
    other: str = "x"


def test_fields_from_copies_the_shared_fields_and_keeps_the_other_defaults():
    part = fields_from(_Part, _Whole(size=64, crop="letterbox"))
    assert part == _Part(size=64, crop="letterbox", extra=1.5)


@pytest.mark.parametrize(("distance", "prototype_distance"), [("cosine", "cosine"), ("euclidean", "euclidean")])
def test_prototypes_embed_a_siamese_run_exactly_as_its_embedder(distance, prototype_distance):
    torch.manual_seed(0)
    model = create_model("conv4-tiny", num_classes=16).eval()
    meta = {"training": "siamese", "extra": {"distance": distance}}
    embed, got = embedding_function(model, meta)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(embed(x), embedder(model, meta)(x))
        torch.testing.assert_close(embed(x).norm(dim=1), torch.ones(3))
    assert got == prototype_distance
    _, supervised = embedding_function(model, {"training": "supervised"})
    assert supervised == "euclidean"


def test_a_comparison_follows_the_one_output_policy(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_comparison(None, foreign, overwrite=False)  # refused before the result is read
    with pytest.raises(OutputExistsError):
        write_comparison(None, foreign, overwrite=True)  # --overwrite never deletes what cxr did not write
    assert (foreign / "mine.txt").read_text() == "keep"
    done = tmp_path / "done"
    done.mkdir()
    for name in COMPARISON_FILES:
        (done / name).write_text("old")
    with pytest.raises(OutputExistsError, match="already complete"):
        write_comparison(None, done, overwrite=False)
    assert (done / "comparison.csv").read_text() == "old"
