"""Few-shot adapters: one interface, deterministic fits, batch-independent scores, the prototype formula, the
logistic-regression baselines and scratch's budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_tools.errors import ConfigError, ModelError
from cxr_tools.methods.adapters import (
    AUTO_METHOD,
    IN_SAMPLE,
    METHODS,
    AdaptConfig,
    build_adapter,
    describe,
    maml_settings,
    resolve_method,
)
from cxr_tools.methods.logistic import pixels_adapter
from cxr_tools.methods.prototypes import PrototypeAdapter, prototype_probabilities, prototypes
from cxr_tools.methods.scratch import resolve_budget
from cxr_tools.models import create_model
from cxr_tools.models.inputs import to_model_input

torch.set_num_threads(1)
WAYS = 2


def _meta(training: str, model, **extra) -> dict:
    return {
        "training": training,
        "architecture": model.model_name,
        "model_args": dict(model.model_args),
        "input": {"normalisation": "unit", "image_size": 32},
        "labels": [],
        "extra": extra,
    }


def _episode(seed: int = 0, n_support: int = 6, n_query: int = 9):
    """Support/query images where class 0 = bright top half, class 1 = bright bottom half (learnable)."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.zeros(n, WAYS)
        y[: n // 3, 0] = 1
        y[n // 3 : 2 * n // 3, 1] = 1
        x = torch.rand(n, 1, 32, 32, generator=g) * 0.3
        x[y[:, 0] == 1, :, :16] += 0.6
        x[y[:, 1] == 1, :, 16:] += 0.6
        return x, y

    return (*make(n_support), *make(n_query))


def _models(norm: str = "group"):
    torch.manual_seed(0)
    return {
        "maml": create_model("conv4-tiny", num_classes=WAYS, norm=norm),
        "siamese": create_model("conv4-tiny", num_classes=16, norm=norm),
        "supervised": create_model("conv4-tiny", num_classes=3, norm=norm),
    }


def _all_adapters(norm: str = "group"):
    models = _models(norm)
    out = []
    for kind, model in models.items():
        meta = _meta(kind, model, **({"maml": {"inner_lr": 0.05, "adapt_steps": 3}} if kind == "maml" else {}))
        out.append((f"{kind}-auto", build_adapter(model, meta, WAYS, AdaptConfig(steps=10))))
    sup = models["supervised"]
    sup_meta = _meta("supervised", sup)
    out.append(("finetune-all", build_adapter(sup, sup_meta, WAYS, AdaptConfig(finetune="all", steps=5))))
    out.append(("prototype-backbone", build_adapter(sup, sup_meta, WAYS, AdaptConfig(method="prototype"))))
    out.append(("maml-on-supervised", build_adapter(sup, sup_meta, WAYS, AdaptConfig(method="maml", adapt_steps=2))))
    flags = AdaptConfig(method="scratch", adapt_steps=2, inner_lr=0.05)
    out.append(("scratch-norun", build_adapter(None, None, WAYS, flags, backbone="conv4-tiny")))
    maml_meta = _meta("maml", models["maml"], maml={"inner_lr": 0.05, "adapt_steps": 2})
    out.append(("scratch-run", build_adapter(models["maml"], maml_meta, WAYS, AdaptConfig("scratch"))))
    adam = AdaptConfig("scratch", adapt_steps=3)  # Adam: the supervised run's fine-tune budget, 3 steps
    out.append(("scratch-adam", build_adapter(None, None, WAYS, adam, match=("runs/sup", sup_meta))))
    out.append(("pixels", build_adapter(None, None, WAYS, AdaptConfig(method="pixels"))))
    for kind, model in models.items():
        probe = AdaptConfig(method="linear-probe")
        out.append((f"linear-probe-{kind}", build_adapter(model, _meta(kind, model), WAYS, probe)))
    return out


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_every_method_scores_each_query_independently_of_its_batch(norm):
    sx, sy, qx, _ = _episode()
    for name, adapter in _all_adapters(norm):
        scorer = adapter.fit(sx, sy, generator=torch.Generator().manual_seed(3))
        batch = scorer.predict(qx)
        assert batch.shape == (len(qx), WAYS) and batch.dtype == torch.float32, name
        assert bool(((batch >= 0) & (batch <= 1)).all()), name
        alone = torch.cat([scorer.predict(qx[i : i + 1]) for i in range(len(qx))])
        torch.testing.assert_close(alone, batch, atol=1e-5, rtol=1e-4, msg=f"{name}: batch-dependent scores")
        # and against different batch-mates: the first query inside a batch of other images
        mixed = scorer.predict(torch.cat([qx[:1], sx]))[:1]
        torch.testing.assert_close(mixed, batch[:1], atol=1e-5, rtol=1e-4, msg=name)


def test_fit_is_deterministic_and_leaves_the_model_unchanged():
    sx, sy, qx, _ = _episode()
    for name, adapter in _all_adapters("batch"):
        model = getattr(adapter, "model", None) or getattr(adapter, "module", None)
        before = {k: v.clone() for k, v in model.state_dict().items()} if model is not None else {}
        a = adapter.fit(sx, sy, generator=torch.Generator().manual_seed(5)).predict(qx)
        b = adapter.fit(sx, sy, generator=torch.Generator().manual_seed(5)).predict(qx)
        torch.testing.assert_close(a, b, msg=name)
        for k, v in before.items():
            assert torch.equal(v, model.state_dict()[k]), f"{name} modified {k}"


def test_scratch_initialisation_is_seeded_per_generator_and_keeps_global_rng():
    cfg = AdaptConfig(method="scratch", adapt_steps=1, inner_lr=0.1)
    adapter = build_adapter(None, None, WAYS, cfg, backbone="conv4-tiny")
    state = torch.get_rng_state()
    w1 = adapter.init_model(torch.Generator().manual_seed(1)).head.weight
    w1b = adapter.init_model(torch.Generator().manual_seed(1)).head.weight
    w2 = adapter.init_model(torch.Generator().manual_seed(2)).head.weight
    assert torch.equal(w1, w1b) and not torch.equal(w1, w2)
    assert torch.equal(state, torch.get_rng_state())


def test_adaptation_learns_a_separable_task():
    sx, sy, qx, qy = _episode(n_support=12, n_query=30)
    torch.manual_seed(0)
    sup = create_model("conv4-tiny", num_classes=3)
    for cfg in (AdaptConfig(steps=200, lr=0.05), AdaptConfig(finetune="all", steps=60, lr=0.01)):
        probs = build_adapter(sup, _meta("supervised", sup), WAYS, cfg).fit(sx, sy).predict(qx)
        from sklearn.metrics import roc_auc_score

        for j in range(WAYS):
            assert roc_auc_score(qy[:, j].numpy(), probs[:, j].numpy()) > 0.9, (cfg.finetune, j)


def test_prototype_probabilities_follow_the_formula():
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    y = torch.tensor([[1.0, 0.0], [1.0, float("nan")], [0.0, 1.0], [0.0, 0.0]])
    pos, neg = prototypes(emb, y)
    torch.testing.assert_close(pos[0], torch.tensor([0.9, 0.1]))
    torch.testing.assert_close(neg[0], torch.tensor([0.05, 0.95]))
    torch.testing.assert_close(pos[1], torch.tensor([0.0, 1.0]))  # NaN target left out of both prototypes
    torch.testing.assert_close(neg[1], torch.tensor([0.55, 0.45]))
    q = torch.tensor([[0.7, 0.3]])
    p = prototype_probabilities(q, pos, neg, distance="euclidean", temperature=0.5)
    d_pos = ((q[0] - pos[0]) ** 2).sum()
    d_neg = ((q[0] - neg[0]) ** 2).sum()
    expected = math.exp(-d_pos / 0.5) / (math.exp(-d_pos / 0.5) + math.exp(-d_neg / 0.5))
    assert float(p[0, 0]) == pytest.approx(expected, rel=1e-5)
    # the temperature calibrates only: same decision at 0.5, same order
    p2 = prototype_probabilities(torch.rand(20, 2), pos, neg, temperature=2.0)
    p3 = prototype_probabilities(torch.rand(20, 2), pos, neg, temperature=0.05)
    assert ((p2 >= 0.5) == (p2 >= 0.5)).all() and p3.shape == (20, 2)
    qs = torch.rand(20, 2, generator=torch.Generator().manual_seed(0))
    a = prototype_probabilities(qs, pos, neg, temperature=2.0)
    b = prototype_probabilities(qs, pos, neg, temperature=0.05)
    assert torch.equal(a >= 0.5, b >= 0.5)
    assert torch.equal(torch.argsort(a[:, 0]), torch.argsort(b[:, 0]))


def test_prototype_adapter_on_identity_embedding_and_cosine():
    adapter = PrototypeAdapter(lambda x: x.flatten(1), torch.nn.Identity(), WAYS, distance="cosine", temperature=1.0)
    sx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -0.5]]).reshape(3, 1, 1, 2)
    sy = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    probs = adapter.fit(sx, sy).predict(torch.tensor([[2.0, -0.5]]).reshape(1, 1, 1, 2))
    assert float(probs[0, 0]) > 0.5 > float(probs[0, 1])


def test_siamese_runs_use_their_projection_and_distance():
    torch.manual_seed(0)
    model = create_model("conv4-tiny", num_classes=16)
    cos = build_adapter(model, _meta("siamese", model, distance="cosine"), WAYS)
    euc = build_adapter(model, _meta("siamese", model, distance="euclidean"), WAYS)
    assert (cos.method, cos.distance, euc.distance) == ("prototype", "cosine", "euclidean")
    x = torch.rand(3, 1, 32, 32)
    emb = cos.embeddings(x)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    sup = build_adapter(model, _meta("supervised", model), WAYS, AdaptConfig(method="prototype"))
    assert sup.embeddings(x).shape == (3, model.num_features)


def test_method_resolution_and_settings():
    assert resolve_method("auto", "maml") == "maml"
    assert resolve_method("auto", "siamese") == "prototype"
    assert resolve_method("auto", "supervised") == "finetune"
    assert resolve_method("scratch", None) == "scratch"
    assert set(AUTO_METHOD.values()) <= set(METHODS)
    with pytest.raises(ConfigError, match="needs a run"):
        resolve_method("auto", None)
    with pytest.raises(ConfigError, match="Unknown method"):
        AdaptConfig(method="knn")
    with pytest.raises(ConfigError, match="finetune"):
        AdaptConfig(finetune="last")
    with pytest.raises(ConfigError, match="temperature"):
        AdaptConfig(temperature=0)
    run = {"extra": {"maml": {"inner_lr": 0.2, "adapt_steps": 7}}}
    assert (maml_settings(run, AdaptConfig()).inner_lr, maml_settings(run, AdaptConfig()).adapt_steps) == (0.2, 7)
    assert maml_settings(run, AdaptConfig(adapt_steps=1)).adapt_steps == 1
    assert maml_settings(None, AdaptConfig()).adapt_steps == 5
    cfg = AdaptConfig(method="scratch", inner_lr=0.3, adapt_steps=5)
    scratch = build_adapter(None, None, WAYS, cfg, backbone="conv4-tiny")
    assert describe(scratch) == {
        "method": "scratch",
        "inner_lr": 0.3,
        "adapt_steps": 5,
        "optimiser": "sgd",
        "matched_run": None,
        "architecture": "conv4-tiny",
        "support_scores": IN_SAMPLE,
    }


def test_bad_inputs_are_refused():
    torch.manual_seed(0)
    maml = create_model("conv4-tiny", num_classes=3)
    with pytest.raises(ModelError, match="--ways 3"):
        build_adapter(maml, _meta("maml", maml), WAYS)
    with pytest.raises(ConfigError, match="needs a trained run"):
        build_adapter(None, None, WAYS, AdaptConfig(method="finetune"))
    sup = create_model("conv4-tiny", num_classes=3)
    adapter = build_adapter(sup, _meta("supervised", sup), WAYS, AdaptConfig(steps=1))
    sx, sy, _, _ = _episode()
    with pytest.raises(ModelError, match="no positive image for class column"):
        adapter.fit(sx, torch.zeros_like(sy))
    with pytest.raises(ModelError, match="expected"):
        adapter.fit(sx, sy[:, :1])
    proto = build_adapter(sup, _meta("supervised", sup), WAYS, AdaptConfig(method="prototype"))
    with pytest.raises(ModelError, match="lack a positive or a negative"):
        proto.fit(sx, torch.ones_like(sy))


def test_to_model_input_applies_the_normalisation():
    images = np.array([[[0, 255]]], dtype=np.uint8)
    x = to_model_input(images, {"input": {"normalisation": "unit"}})
    assert x.shape == (1, 1, 1, 2) and float(x.max()) == 1.0
    y = to_model_input(images, "imagenet")
    assert float(y[0, 0, 0, 0]) == pytest.approx(-0.449 / 0.226, rel=1e-5)


def test_scratch_budget_comes_from_flags_match_or_run_never_a_silent_default():
    maml_run = {
        "training": "maml",
        "architecture": "conv4-tiny",
        "extra": {"maml": {"inner_lr": 0.2, "adapt_steps": 7}},
    }
    siamese_run = {"training": "siamese", "extra": {"distance": "cosine"}}
    supervised_run = {"training": "supervised", "extra": {}}
    with pytest.raises(ConfigError, match=r"--adapt-steps and --inner-lr not given.*--match RUN"):
        resolve_budget(None, None)
    with pytest.raises(ConfigError, match=r"--inner-lr not given"):
        build_adapter(None, None, WAYS, AdaptConfig(method="scratch", adapt_steps=3), backbone="conv4-tiny")
    matched = resolve_budget(None, None, match=("runs/maml", maml_run))
    assert (matched.steps, matched.lr, matched.optimiser, matched.matched_run) == (7, 0.2, "sgd", "runs/maml")
    assert resolve_budget(2, None, match=("runs/maml", maml_run)).steps == 2  # a flag overrides one value
    assert resolve_budget(None, None, run=("runs/sup", supervised_run)).optimiser == "adam"
    # --match wins over the evaluated run
    assert resolve_budget(None, None, run=("runs/sup", supervised_run), match=("runs/maml", maml_run)).lr == 0.2
    with pytest.raises(ConfigError, match="siamese run adapts without training"):
        resolve_budget(None, None, match=("runs/siam", siamese_run))
    with pytest.raises(ConfigError, match="the siamese run runs/siam has none"):
        resolve_budget(None, None, run=("runs/siam", siamese_run))
    # scratch on the matched run's architecture, the budget recorded with the run's path
    adapter = build_adapter(None, None, WAYS, AdaptConfig(method="scratch"), match=("runs/maml", maml_run))
    settings = describe(adapter)
    assert settings["architecture"] == "conv4-tiny"
    assert {k: settings[k] for k in ("adapt_steps", "inner_lr", "optimiser", "matched_run")} == {
        "adapt_steps": 7, "inner_lr": 0.2, "optimiser": "sgd", "matched_run": "runs/maml"
    }  # fmt: skip
    with pytest.raises(ConfigError, match="--match applies to --method scratch"):
        build_adapter(None, None, WAYS, AdaptConfig(method="pixels"), match=("runs/maml", maml_run))


def test_pixel_logistic_regression_separates_a_trivially_separable_task():
    from sklearn.metrics import roc_auc_score

    sx, sy, qx, qy = _episode(n_support=12, n_query=30)
    for standardise in (True, False):
        probs = pixels_adapter(WAYS, standardise=standardise).fit(sx, sy).predict(qx)
        assert probs.shape == (30, WAYS) and probs.dtype == torch.float32
        for j in range(WAYS):
            assert roc_auc_score(qy[:, j].numpy(), probs[:, j].numpy()) == 1.0, (standardise, j)
    settings = describe(build_adapter(None, None, WAYS, AdaptConfig(method="pixels")))
    assert settings["method"] == "pixels" and settings["C"] == 1.0 and settings["standardise"] is True
    # standardised with support statistics: an affine input normalisation changes no score
    adapter = pixels_adapter(WAYS)
    torch.testing.assert_close(adapter.fit(sx, sy).predict(qx), adapter.fit(sx * 2 - 1, sy).predict(qx * 2 - 1))


def test_linear_probe_uses_the_frozen_features_of_the_run():
    models = _models()
    x = torch.rand(4, 1, 32, 32)
    siamese = build_adapter(models["siamese"], _meta("siamese", models["siamese"]), WAYS, AdaptConfig("linear-probe"))
    assert describe(siamese)["features"] == "embedding"
    emb = torch.from_numpy(siamese.features(x))
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4, dtype=emb.dtype))
    for kind in ("maml", "supervised"):
        model = models[kind]
        probe = build_adapter(model, _meta(kind, model), WAYS, AdaptConfig("linear-probe"))
        assert describe(probe)["features"] == "backbone"
        with torch.no_grad():
            expected = model.forward_features(x).double()
        torch.testing.assert_close(torch.from_numpy(probe.features(x)), expected, rtol=1e-5, atol=1e-6)
    sx, sy, _, _ = _episode()
    with pytest.raises(ModelError, match="lacks a positive or a negative"):
        siamese.fit(sx, torch.ones_like(sy))
    with pytest.raises(ConfigError, match="needs a trained run"):
        build_adapter(None, None, WAYS, AdaptConfig(method="linear-probe"))


def test_every_method_returns_its_support_scores_after_adaptation_scored_like_queries():
    sx, sy, _, _ = _episode()
    for name, adapter in _all_adapters("batch"):
        scorer = adapter.fit(sx, sy, generator=torch.Generator().manual_seed(3))
        support = scorer.support_scores(sx, sy)
        assert support.shape == (len(sx), WAYS) and support.dtype == torch.float32, name
        if adapter.method in ("prototype", "pixels", "linear-probe"):
            continue  # leave-one-out / cross-validated (their own tests)
        # exactly the query path: eval mode, one image at a time gives the same (no BatchNorm batch statistics)
        alone = torch.cat([scorer.predict(sx[i : i + 1]) for i in range(len(sx))])
        torch.testing.assert_close(support, alone, atol=1e-5, rtol=1e-4, msg=name)


def test_prototype_support_scores_are_leave_one_out():
    from cxr_tools.methods.prototypes import leave_one_out_prototypes

    emb = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]], dtype=torch.float32)
    adapter = PrototypeAdapter(lambda x: x.flatten(1), torch.nn.Identity(), WAYS, temperature=0.5)
    scorer = adapter.fit(emb[:, None, :, None], y)
    support = scorer.support_scores(emb[:, None, :, None], y)
    pos, neg = leave_one_out_prototypes(emb, y, 0)
    torch.testing.assert_close(pos[0], emb[1])  # image 0 left out of its class's positives
    expected = prototype_probabilities(emb[:1], pos, neg, temperature=0.5)
    torch.testing.assert_close(support[:1], expected)
    assert not torch.allclose(support[:1], scorer.predict(emb[:1, None, :, None]))  # not in-sample


def test_logistic_support_scores_are_cross_validated_exactly_as_a_direct_refit():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    from cxr_tools.methods.logistic import SUPPORT_SCORING, pixel_features

    gen = torch.Generator().manual_seed(0)
    sx = torch.rand(20, 1, 8, 8, generator=gen)
    sy = torch.zeros(20, WAYS)
    sy[:6, 0] = 1
    sy[6:12, 1] = 1
    sy[3, 1] = 1  # one image positive for both classes
    adapter = build_adapter(None, None, WAYS, AdaptConfig(method="pixels"))
    scorer = adapter.fit(sx, sy)
    support = scorer.support_scores(sx, sy).numpy()
    feats = pixel_features(sx)
    for j in range(WAYS):
        y = sy[:, j].numpy().astype(int)
        expected = np.zeros(len(y))
        for train, test in StratifiedKFold(n_splits=5).split(feats, y):
            scaler = StandardScaler().fit(feats[train])
            clf = LogisticRegression(C=1.0, max_iter=1000, tol=1e-8).fit(scaler.transform(feats[train]), y[train])
            expected[test] = clf.predict_proba(scaler.transform(feats[test]))[:, 1]
        np.testing.assert_allclose(support[:, j], expected, atol=2e-3)
        # noise features: the in-sample fit separates its own support perfectly, held-out scores do not
        in_sample = scorer.predict(sx).numpy()[:, j]
        assert roc_auc_score(y, in_sample) == 1.0 and roc_auc_score(y, support[:, j]) < 0.9
    assert describe(adapter)["support_scores"] == SUPPORT_SCORING
    # one positive of a class: nothing to hold out, that class keeps its in-sample scores (the other does not)
    one = sy.clone()
    one[1:6, 0] = 0
    scorer = adapter.fit(sx, one)
    support = scorer.support_scores(sx, one).numpy()
    in_sample = scorer.predict(sx).numpy()
    np.testing.assert_allclose(support[:, 0], in_sample[:, 0], rtol=1e-5)
    assert not np.allclose(support[:, 1], in_sample[:, 1])


def test_scratch_batchnorm_normalises_with_support_statistics_frozen_for_queries():
    from cxr_tools.methods.scratch import Budget, ScratchAdapter, support_statistics

    sx, sy, qx, _ = _episode(n_support=9, n_query=12)
    adapter = ScratchAdapter("conv4-tiny", {"norm": "batch"}, WAYS, Budget(steps=2, lr=0.05))
    assert adapter.settings()["batchnorm"] == "support-set statistics, frozen"
    grouped = ScratchAdapter("conv4-tiny", {"norm": "group"}, WAYS, Budget(steps=2, lr=0.05))
    assert "batchnorm" not in grouped.settings()
    # the statistics are exactly the support set's: what train-mode BatchNorm would compute on it
    model = adapter.init_model(torch.Generator().manual_seed(1))
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(first.running_mean, torch.zeros_like(first.running_mean))  # a random init: no statistics
    seen = []
    handle = first.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    support_statistics(model, sx)
    handle.remove()
    torch.testing.assert_close(first.running_mean, seen[0].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(first.running_var, seen[0].var(dim=(0, 2, 3), unbiased=True))
    assert not any(m.training for m in model.modules())
    # frozen: a query's score is the same alone or in a batch, and fitting never touched the queries
    scorer = adapter.fit(sx, sy, generator=torch.Generator().manual_seed(1))
    batch = scorer.predict(qx)
    alone = torch.cat([scorer.predict(qx[i : i + 1]) for i in range(len(qx))])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)
    again = adapter.fit(sx, sy, generator=torch.Generator().manual_seed(1)).predict(qx[:3])
    torch.testing.assert_close(again, batch[:3], atol=1e-5, rtol=1e-4)


def test_finetune_uses_the_budget_the_run_recorded_for_its_mode():
    from cxr_tools.methods.adapters import finetune_record, finetune_settings

    meta = {"extra": {"finetune": {**finetune_record("head"), "steps": 40, "lr": 0.02}}}
    assert finetune_settings(AdaptConfig(), meta) == (40, 0.02)
    assert finetune_settings(AdaptConfig(steps=3), meta) == (3, 0.02)  # a flag overrides one value
    assert finetune_settings(AdaptConfig(finetune="all"), meta) == (50, 1e-3)  # recorded for head only
    assert finetune_settings(AdaptConfig(), None) == (100, 1e-2)
