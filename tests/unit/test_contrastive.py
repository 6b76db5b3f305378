"""Contrastive loss values by hand, distances and similarity on the unit sphere, the validation threshold,
the Siamese wrapper (unit-norm embeddings, one batch for both sides) and the one embedding of a saved run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.methods.contrastive import best_threshold, check_margin, contrastive_loss
from cxr_tools.models import create_model, load_model_dir, save_model_dir
from cxr_tools.models.siamese import SiameseNet, embedder, pair_distance, similarity, trained_distance

E1 = torch.tensor([[1.0, 0.0]])
E2 = torch.tensor([[0.0, 1.0]])
MINUS_E1 = torch.tensor([[-1.0, 0.0]])
ONE, ZERO = torch.tensor([1.0]), torch.tensor([0.0])


def test_cosine_loss_by_hand():
    # orthogonal: d = 1; similar pays ½·1² = 0.5; dissimilar with margin 1 pays 0, with margin 1.5 ½·0.5² = 0.125
    assert float(contrastive_loss(E1, E2, ONE, margin=1.0)) == pytest.approx(0.5)
    assert float(contrastive_loss(E1, E2, ZERO, margin=1.0)) == pytest.approx(0.0)
    assert float(contrastive_loss(E1, E2, ZERO, margin=1.5)) == pytest.approx(0.125)
    # opposite: d = 2 -> similar pays ½·4 = 2; identical dissimilar with margin 0.5 pays ½·0.5² = 0.125
    assert float(contrastive_loss(E1, MINUS_E1, ONE)) == pytest.approx(2.0)
    assert float(contrastive_loss(E1, E1, ZERO, margin=0.5)) == pytest.approx(0.125)


def test_euclidean_loss_by_hand_and_inputs_are_normalised():
    # orthogonal unit vectors are sqrt(2) apart: similar ½·2 = 1; dissimilar margin 2: ½·(2 - sqrt 2)²
    a = torch.tensor([[3.0, 0.0]])  # normalised to e1 first
    assert float(contrastive_loss(a, E2, ONE, distance="euclidean")) == pytest.approx(1.0)
    assert float(contrastive_loss(a, E2, ZERO, margin=2.0, distance="euclidean")) == pytest.approx(
        0.5 * (2 - math.sqrt(2)) ** 2
    )
    batch = contrastive_loss(torch.cat([E1, E1]), torch.cat([E2, MINUS_E1]), torch.tensor([1.0, 0.0]), margin=2.0)
    assert float(batch) == pytest.approx((0.5 + 0.0) / 2)  # mean of 0.5 and ½·max(0, 2 - 2)²
    none = contrastive_loss(torch.cat([E1, E1]), torch.cat([E2, E1]), torch.tensor([1.0, 0.0]), reduction="none")
    assert none.tolist() == pytest.approx([0.5, 0.5])


def test_identical_embeddings_have_finite_gradients():
    for distance in ("cosine", "euclidean"):
        a = torch.tensor([[0.6, 0.8]], requires_grad=True)
        b = a.detach().clone().requires_grad_(True)
        loss = contrastive_loss(a, b, ONE, distance=distance) + contrastive_loss(a, b, ZERO, distance=distance)
        loss.backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_distances_and_similarity_on_the_unit_sphere():
    assert pair_distance(E1, MINUS_E1, "cosine").item() == pytest.approx(2.0)
    assert pair_distance(E1, MINUS_E1, "euclidean").item() == pytest.approx(2.0)
    assert pair_distance(E1, E2, "euclidean").item() == pytest.approx(math.sqrt(2))
    for distance in ("cosine", "euclidean"):
        assert similarity(E1, E1, distance).item() == pytest.approx(1.0)
        assert similarity(E1, MINUS_E1, distance).item() == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="cosine, euclidean"):
        pair_distance(E1, E2, "manhattan")


def test_margin_checks():
    assert check_margin(1.0) == 1.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="--margin"):
            check_margin(bad)


def test_threshold_is_chosen_on_validation_not_fixed_at_one_half():
    # 90% positive pairs whose similarities are all high: a fixed 0.5 calls everything similar (90%),
    # the chosen threshold separates them perfectly
    scores = np.array([0.95] * 9 + [0.7])
    targets = np.array([1] * 9 + [0])
    threshold, accuracy = best_threshold(targets, scores)
    assert 0.7 < threshold <= 0.95 and accuracy == 1.0
    assert ((scores >= 0.5) == targets).mean() == pytest.approx(0.9)
    assert best_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == (pytest.approx(0.25), 1.0)
    assert best_threshold([1, 0], [0.1, 0.9])[1] == 0.5  # anti-correlated: the best is all one answer


def test_siamese_embeddings_are_unit_norm_and_pairs_share_one_batch():
    torch.manual_seed(0)
    net = SiameseNet(create_model("conv4-tiny", num_classes=12), distance="euclidean").eval()
    a, b = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    za, zb = net(a, b)
    assert za.shape == (3, 12) and torch.allclose(za.norm(dim=1), torch.ones(3))
    assert torch.allclose(za, net(a), atol=1e-6) and torch.allclose(zb, net(b), atol=1e-6)
    sims = net.similarity(a, b)
    assert torch.allclose(sims, net.similarity(b, a), atol=1e-6) and ((sims >= 0) & (sims <= 1)).all()
    assert torch.allclose(net.similarity(a, a), torch.ones(3), atol=1e-5)
    with pytest.raises(ModelError, match="projection head"):
        SiameseNet(create_model("conv4-tiny", num_classes=0))


def test_a_saved_run_embeds_like_the_network_that_trained_it(tmp_path):
    torch.manual_seed(1)
    net = SiameseNet(create_model("conv4-tiny", num_classes=6), distance="euclidean").eval()
    save_model_dir(net.backbone, {"training": "siamese", "extra": {"distance": "euclidean"}}, tmp_path / "m")
    model, meta = load_model_dir(tmp_path / "m")
    x = torch.rand(2, 1, 32, 32)
    assert trained_distance(meta) == "euclidean"
    assert torch.allclose(embedder(model.eval(), meta)(x), net(x), atol=1e-6)
    # any other run embeds with its pooled backbone features, unit length, whatever its head
    save_model_dir(net.backbone, {"training": "supervised"}, tmp_path / "s")
    model, meta = load_model_dir(tmp_path / "s")
    z = embedder(model.eval(), meta)(x)
    assert trained_distance(meta) is None and z.shape == (2, model.num_features)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ModelError, match="forward_features"):
        embedder(torch.nn.Linear(2, 2), meta)
