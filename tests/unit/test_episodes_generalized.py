"""Generalized episodes (MetaChest): seen + unseen classes, nothing outside them, "No Finding" negatives, and
standard episode lists unchanged (their hashes do not move)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_tools.data.sampling.episodes import (
    Episode,
    EpisodeSampler,
    EpisodeSpec,
    GeneralizedSampler,
    episode_list_hash,
    load_episode_list,
    save_episode_list,
)
from cxr_tools.errors import DataError

NAMES = ["U1", "U2", "U3", "S1", "S2", "S3", "Other", "No Finding"]
UNSEEN, SEEN = ("U1", "U2", "U3"), ("S1", "S2", "S3")


def _labels(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    raw = (rng.random((n, len(NAMES))) < 0.12).astype(np.float32)
    raw[rng.random(raw.shape) < 0.03] = -1.0
    raw[:, -1] = (np.nan_to_num(raw[:, :-1]) == 0).all(axis=1)  # "No Finding" exactly when nothing else
    return raw


def _sampler(raw, spec, **kw):
    return GeneralizedSampler(
        raw, NAMES, UNSEEN, SEEN, np.arange(len(raw)), spec, patients=np.arange(len(raw)).astype(str), **kw
    )


def test_episodes_hold_unseen_then_seen_classes_and_nothing_else():
    raw = _labels()
    sampler = _sampler(raw, EpisodeSpec(2, 3, 4, seen_ways=2))
    for i in range(50):
        ep = sampler.sample(np.random.default_rng([0, i]))
        assert len(ep.classes) == 4 and set(ep.unseen) <= set(UNSEEN) and set(ep.seen) <= set(SEEN)
        assert ep.classes == (*ep.unseen, *ep.seen) and len(ep.seen) == 2
        rows = np.concatenate([ep.support_rows, ep.query_rows])
        outside = [j for j, c in enumerate(NAMES[:-1]) if c not in ep.classes]
        assert not ((raw[rows][:, outside] == 1) | (raw[rows][:, outside] == -1)).any()
        targets = np.concatenate([ep.support_targets, ep.query_targets])
        negatives = rows[targets.sum(axis=1) == 0]
        assert len(negatives) == 3 + 4 and (raw[negatives, -1] == 1).all()  # "No Finding" negatives only
        assert (ep.support_targets.sum(axis=0) >= 3).all() and (ep.query_targets.sum(axis=0) >= 4).all()


def test_the_seen_classes_survive_a_save_and_load_and_enter_the_hash(tmp_path):
    raw = _labels()
    episodes = _sampler(raw, EpisodeSpec(2, 2, 3, seen_ways=1)).fixed_list(3, seed=1)
    path = save_episode_list(tmp_path / "e.json", episodes, {}, fingerprint="f")
    loaded = load_episode_list(path, raw, NAMES, fingerprint="f")
    assert [e.seen for e in loaded] == [e.seen for e in episodes]
    as_standard = [
        Episode(e.classes, e.support_rows, e.support_targets, e.query_rows, e.query_targets) for e in episodes
    ]
    assert episode_list_hash(as_standard, "f") != episode_list_hash(episodes, "f")


def test_standard_episodes_keep_their_format_and_hash():
    raw = _labels()
    sampler = EpisodeSampler(
        raw, NAMES, UNSEEN, np.arange(len(raw)), EpisodeSpec(2, 2, 3), patients=np.arange(len(raw)).astype(str)
    )
    ep = sampler.sample(np.random.default_rng(0))
    assert ep.seen == () and "seen" not in ep.to_dict()


def test_refusals_name_what_is_short():
    raw = _labels()
    with pytest.raises(DataError, match="--seen-ways 4 asks for more seen classes"):
        _sampler(raw, EpisodeSpec(2, 2, 3, seen_ways=4))
    no_negatives = raw.copy()
    clean = no_negatives[:, -1] == 1
    no_negatives[clean, -2], no_negatives[clean, -1] = 1.0, 0.0  # the finding-free images now carry "Other"
    with pytest.raises(DataError, match="Too few 'No Finding' images"):
        _sampler(no_negatives, EpisodeSpec(2, 2, 3, seen_ways=1))
    ids, spec = np.arange(len(raw)).astype(str), EpisodeSpec(2, 2, 3, seen_ways=1)
    with pytest.raises(DataError, match="both seen and unseen"):
        GeneralizedSampler(raw, NAMES, UNSEEN, ("U1", "S1"), np.arange(len(raw)), spec, patients=ids)


def test_a_seen_class_too_rare_in_the_pool_is_left_out_with_a_warning(caplog):
    raw = _labels()
    raw[:, NAMES.index("S3")] = 0.0
    raw[:3, NAMES.index("S3")] = 1.0
    sampler = _sampler(raw, EpisodeSpec(2, 2, 3, seen_ways=2))
    assert sampler.dropped == ("S3",) and sampler.seen == ("S1", "S2")
    assert "S3" in caplog.text
