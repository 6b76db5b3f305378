"""ProtoNet-ML's multi-label prototypical loss and rule (methods/protonet.py): a hand-computed episode, gradients
against finite differences, one-shot and unknown-label edge cases, and the prototype adapter scoring with it."""

from __future__ import annotations

import math

import pytest
import torch

from cxr_tools.errors import ModelError
from cxr_tools.methods.protonet import (
    embed,
    leave_one_out_logits,
    positive_prototypes,
    protonet_logits,
    protonet_loss,
)
from cxr_tools.methods.prototypes import PrototypeAdapter
from cxr_tools.models.registry import create_model

# Support: two positives of class 0 at (0,0) and (2,0); one image of classes 0 and 1 at (1,3); a negative at (4,4).
SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [4.0, 4.0]], dtype=torch.float64)
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)


def test_prototypes_threshold_and_logits_match_a_hand_computed_episode():
    protos = positive_prototypes(SUPPORT, TARGETS)
    assert protos.tolist() == [[1.0, 1.0], [1.0, 3.0]]  # a multi-label image counts towards both of its classes
    # distances of the 4 support images to the 2 prototypes, by hand
    d = [
        [math.sqrt(2), math.sqrt(10)],
        [math.sqrt(2), math.sqrt(10)],
        [2.0, 0.0],
        [math.sqrt(18), math.sqrt(10)],
    ]
    tau = sum(sum(row) for row in d) / 8
    query = torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # distance 1 to both prototypes
    logits = protonet_logits(SUPPORT, TARGETS, query)
    assert logits.tolist()[0] == pytest.approx([tau - 1.0, tau - 1.0], abs=1e-12)
    loss, out = protonet_loss(SUPPORT, TARGETS, query, torch.tensor([[1.0, 0.0]]))
    expected = (math.log1p(math.exp(-(tau - 1))) + math.log1p(math.exp(tau - 1))) / 2  # BCE of y=1 and y=0
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(out.double(), logits, atol=1e-6)


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    sy = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=torch.float64)
    qy = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.float64)

    def loss(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        from cxr_tools.methods.maml.losses import multilabel_bce

        return multilabel_bce(protonet_logits(s, sy, q), qy)

    assert torch.autograd.gradcheck(loss, (support, queries), eps=1e-6, atol=1e-5)
    value = loss(support, queries)
    value.backward()
    assert support.grad is not None and float(support.grad.abs().sum()) > 0  # through prototypes and threshold


def test_one_shot_support_on_its_own_prototype_has_a_finite_gradient():
    support = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]], requires_grad=True)
    sy = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # each class one shot: distance 0 to its prototype
    queries = torch.tensor([[1.0, 1.5], [0.5, 0.0]], requires_grad=True)
    loss, _ = protonet_loss(support, sy, queries, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(support.grad).all() and torch.isfinite(queries.grad).all()


def test_unknown_labels_count_nowhere_and_a_class_without_positives_is_refused():
    sy = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0], [0.0, 0.0]], dtype=torch.float64)
    support = torch.tensor([[0.0, 0.0], [4.0, 0.0], [9.0, 9.0]], dtype=torch.float64)
    assert positive_prototypes(support, sy).tolist() == [[0.0, 0.0], [4.0, 0.0]]
    loss, _ = protonet_loss(support, sy, support[:1], torch.tensor([[1.0, float("nan")]]))
    assert math.isfinite(float(loss))  # the unknown query entry adds no loss
    with pytest.raises(ModelError, match="column\\(s\\) 1 have no positive"):
        positive_prototypes(support, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))


def test_leave_one_out_scores_each_support_image_against_the_others():
    loo = leave_one_out_logits(SUPPORT, TARGETS)
    for i in (0, 1, 3):  # every class keeps a positive without image i
        keep = [j for j in range(len(SUPPORT)) if j != i]
        expected = protonet_logits(SUPPORT[keep], TARGETS[keep], SUPPORT[i : i + 1])
        assert torch.allclose(loo[i : i + 1], expected)
    # image 2 is class 1's only positive: class 1 keeps the full set's prototype, class 0 the others'
    assert torch.isfinite(loo).all()


def test_prototype_adapter_scores_a_protonet_run_with_its_rule_batch_independently():
    torch.manual_seed(0)
    model = create_model("conv4-tiny", num_classes=2).eval()
    x = torch.rand(10, 1, 32, 32)
    sy = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    adapter = PrototypeAdapter(lambda v: embed(model, v), model, 2, rule="mean-distance", temperature=0.05)
    scorer = adapter.fit(x[:6], sy)
    with torch.no_grad():
        z = embed(model, x)
        expected = torch.sigmoid(protonet_logits(z[:6], sy, z[6:]))
    probs = scorer.predict(x[6:])
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(scorer.predict(x[6:7]), probs[:1], atol=1e-6)  # no batch effects
    assert adapter.temperature == 1.0  # the trained rule has no temperature
    assert scorer.support_scores(x[:6], sy).shape == (6, 2)


def test_build_adapter_gives_a_protonet_run_its_trained_embedding_and_rule():
    from cxr_tools.methods.adapters import AdaptConfig, build_adapter, describe

    torch.manual_seed(0)
    model = create_model("conv4-tiny", num_classes=2).eval()
    meta = {"training": "protonet", "extra": {"protonet": {"rule": "mean-distance", "embedding_dim": 4}}}
    adapter = build_adapter(model, meta, ways=3)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = embed(model, x, 4)  # 8 conv4-tiny features averaged down to 4, not L2-normalised
    assert adapter.method == "prototype" and describe(adapter)["rule"] == "mean-distance"
    assert expected.shape == (3, 4) and torch.allclose(adapter.embeddings(x), expected, atol=1e-6)
    other = build_adapter(model, {"training": "supervised"}, ways=3, config=AdaptConfig(method="prototype"))
    assert other.rule == "pos-neg" and "rule" not in describe(other)  # other runs' prototypes are unchanged


def test_a_protonet_collapse_warning_gives_advice_that_applies_to_it():
    from cxr_tools.methods.collapse import STRETCH, CollapseWatch

    flat = {"loss": 0.64, "prior_loss": 0.6365, "query_auc": 0.5, "output_spread": 0.1}
    watch = CollapseWatch(advice="Lower --meta-lr.")
    messages = [watch.update(step, flat) for step in range(1, STRETCH + 1)]
    assert messages[:-1] == [None] * (STRETCH - 1)
    assert messages[-1].endswith("(query AUC < 0.6). Lower --meta-lr.") and "--inner-lr" not in messages[-1]
