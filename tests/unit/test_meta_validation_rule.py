"""Meta-validation is always possible or refused, never skipped in silence, and the collapse
watch of meta-training (item 3), on real caches written by the cache factory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from cache_factory import make_cache

from cxr_tools.data.caches.format import open_cache
from cxr_tools.data.sampling.episodes import EpisodeSpec
from cxr_tools.data.sampling.meta_samplers import meta_samplers
from cxr_tools.errors import DataError
from cxr_tools.methods.collapse import STRETCH, CollapseWatch, beats_prior, is_flat, unusable

CLASSES = ("a", "b", "c", "d", "e", "f", "g")


def _single_label_cache(tmp_path, per_class=30):
    """Class folders without "No Finding": every image has exactly one of seven classes, one patient each."""
    n = per_class * len(CLASSES)
    values = np.zeros((n, len(CLASSES)), dtype=np.float32)
    values[np.arange(n), np.arange(n) % len(CLASSES)] = 1
    return open_cache(make_cache(tmp_path, n, CLASSES, values=values, patients=[f"p{i}" for i in range(n)]))


def test_two_val_classes_validate_on_one_way_episodes_and_say_so(tmp_path, caplog):
    cache = _single_label_cache(tmp_path)
    split = "train=a,b,c;val=d,e;test=f,g"
    with caplog.at_level(logging.WARNING):
        _, train, val, _ = meta_samplers(cache, split, 0, EpisodeSpec(2, 5, 5), validation=True)
    assert train.spec.ways == 2 and val is not None and val.spec.ways == 1
    assert "Meta-validation uses 1-way episodes" in caplog.text
    episode = val.sample(np.random.default_rng(0))
    # one class against the other meta-val class's images: positives and negatives on both sides
    assert episode.support_targets.shape == (10, 1) and episode.support_targets.sum() == 5
    assert set(episode.classes) <= {"d", "e"}


def test_ways_that_fit_are_kept(tmp_path):
    cache = _single_label_cache(tmp_path)
    _, _, val, _ = meta_samplers(cache, "train=a,b,c;val=d,e,f;test=g", 0, EpisodeSpec(2, 5, 5), validation=True)
    assert val.spec.ways == 2


def test_one_val_class_without_negatives_is_refused_with_a_way_out(tmp_path):
    cache = _single_label_cache(tmp_path)
    with pytest.raises(DataError) as err:
        meta_samplers(cache, "train=a,b,c,d,e;val=f;test=g", 0, EpisodeSpec(2, 5, 5), validation=True)
    assert "--val-episodes 0" in err.value.hint and "even with 1-way" in err.value.message
    # asked for explicitly, no validation is fine
    assert meta_samplers(cache, "train=a,b,c,d,e;val=f;test=g", 0, EpisodeSpec(2, 5, 5), validation=False)[2] is None


def _step(loss, auc, prior=0.6365, spread=0.3):
    return {"loss": loss, "prior_loss": prior, "query_auc": auc, "output_spread": spread}


def test_collapse_needs_a_stretch_of_flat_steps_and_is_reported_once():
    watch = CollapseWatch()
    warnings = [watch.update(s, _step(0.6365, 0.5)) for s in range(1, STRETCH)]
    assert not any(warnings) and watch.report() is None
    assert "collapsed to the label prior" in watch.update(STRETCH, _step(0.6365, 0.5))
    assert watch.update(STRETCH + 1, _step(0.6365, 0.5)) is None  # said once
    report = watch.report()
    assert report["from_step"] == 1 and report["detected_at_step"] == STRETCH
    assert report["recovered_at_step"] is None
    watch.update(STRETCH + 2, _step(0.3, 0.9))
    assert watch.report()["recovered_at_step"] == STRETCH + 2
    again = CollapseWatch()
    again.load_state_dict(watch.state_dict())
    assert again.report() == watch.report()


def test_a_learning_or_slowly_starting_run_is_not_flat():
    assert not is_flat(_step(0.45, 0.7))  # below the prior
    assert not is_flat(_step(0.64, 0.85))  # at the prior's loss but ranking well: a slow start
    assert is_flat(_step(0.9, 0.5))  # worse than the prior and not ranking
    assert is_flat(_step(0.3, 0.9, spread=0.0))  # constant outputs
    watch = CollapseWatch()
    for s in range(1, 3 * STRETCH):
        watch.update(s, _step(0.6365, 0.5) if s % STRETCH else _step(0.4, 0.8))
    assert watch.report() is None


def test_beating_the_prior_on_validation():
    assert beats_prior(0.8, 0.05) and not beats_prior(0.52, 0.05) and not beats_prior(None, None)
    watch = CollapseWatch()
    for s in range(1, STRETCH + 1):
        watch.update(s, _step(0.6365, 0.5))
    assert unusable(watch.report({"val_auc": 0.5, "val_auc_ci95": 0.0}))
    assert unusable(watch.report({}))  # no validated weights: nothing beat the prior
    assert not unusable(watch.report({"val_auc": 0.9, "val_auc_ci95": 0.02}))  # best weights came before it
    assert not unusable(None)
