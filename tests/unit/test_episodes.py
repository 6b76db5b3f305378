"""Episode sampling follows docs/science.md exactly and is reproducible from the index alone: episodes are
patient-disjoint, a patient gives at most ``images_per_patient`` images, negatives lack the episode's classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_tools.data.sampling.episodes import (
    EPISODE_LIST_VERSION,
    EpisodeSampler,
    EpisodeSpec,
    episode_list_hash,
    load_episode_list,
    save_episode_list,
)
from cxr_tools.errors import DataError

NAMES = ["A", "B", "C", "D"]
ONE_EACH = np.arange(400).astype(str)  # one patient per image


def _labels(n=400, seed=0):
    rng = np.random.default_rng(seed)
    raw = (rng.random((n, 4)) < 0.15).astype(np.float32)
    raw[rng.random((n, 4)) < 0.05] = -1.0  # some uncertain
    raw[rng.random((n, 4)) < 0.05] = np.nan  # some not mentioned
    return raw


def _many_films(patients=400, seed=0):
    """Labels and patient ids of patients with 1-30 films each; a patient's films share most findings."""
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 31, patients)
    pid = np.repeat(np.arange(patients), films)
    base = (rng.random((patients, 4)) < 0.2)[pid]
    raw = np.where(rng.random(base.shape) < 0.1, ~base, base).astype(np.float32)
    raw[rng.random(raw.shape) < 0.03] = -1.0
    return raw, np.array([f"P{p:04d}" for p in pid])


def test_episode_structure_and_targets():
    raw = _labels()
    pool = np.arange(0, 400, 1)
    sampler = EpisodeSampler(
        raw, NAMES, ["A", "B", "C"], pool, EpisodeSpec(ways=2, shots=7, queries=5), patients=ONE_EACH
    )
    ep = sampler.sample(np.random.default_rng(1))
    assert len(ep.classes) == 2 and set(ep.classes) <= {"A", "B", "C"}
    assert len(ep.support_rows) == 7 * 3 and len(ep.query_rows) == 5 * 3
    assert not set(ep.support_rows) & set(ep.query_rows)
    assert len(set(ep.support_rows)) == len(ep.support_rows)
    cols = [NAMES.index(c) for c in ep.classes]
    # targets are the true multi-hot labels restricted to the episode's classes
    np.testing.assert_array_equal(ep.support_targets, (raw[ep.support_rows][:, cols] == 1).astype(np.float32))
    np.testing.assert_array_equal(ep.query_targets, (raw[ep.query_rows][:, cols] == 1).astype(np.float32))
    # K positives per class at least, K negatives with none of the classes, no uncertain entry
    for j in range(2):
        assert ep.support_targets[:, j].sum() >= 7
    assert (ep.support_targets.sum(axis=1) == 0).sum() == 7
    assert not (raw[np.concatenate([ep.support_rows, ep.query_rows])][:, cols] == -1).any()


@pytest.mark.slow
def test_ten_thousand_episodes_are_patient_disjoint_with_one_image_per_patient():
    raw, pid = _many_films()
    spec = EpisodeSpec(ways=2, shots=5, queries=10)
    sampler = EpisodeSampler(raw, NAMES, NAMES, np.arange(len(pid)), spec, patients=pid)
    eps = [sampler.sample(np.random.default_rng([7, i]), shuffle=i % 2 == 1) for i in range(10_000)]
    support = np.stack([ep.support_rows for ep in eps])  # [episodes, 3 * 5]
    query = np.stack([ep.query_rows for ep in eps])  # [episodes, 3 * 10]
    # 45 distinct patients per episode: none on both sides, none with two images
    patients = np.sort(np.unique(pid, return_inverse=True)[1][np.concatenate([support, query], axis=1)], axis=1)
    assert (np.diff(patients, axis=1) > 0).all()
    # the last K (then Q) images are the negatives: none of the episode's classes, positive or uncertain
    cols = np.array([[NAMES.index(c) for c in ep.classes] for ep in eps])[:, None, :]
    negatives = np.concatenate([support[:, -spec.shots :], query[:, -spec.queries :]], axis=1)
    values = raw[negatives[:, :, None], cols]
    assert ((values != 1) & (values != -1)).all()
    positives = raw[support[:, : -spec.shots, None], cols]  # slot j's K positives are positive for class j
    for j in range(spec.ways):
        assert (positives[:, j * spec.shots : (j + 1) * spec.shots, j] == 1).all()
    assert len({ep.classes for ep in eps}) == 12  # every ordered pair of the 4 classes, shuffled or not


def test_images_per_patient_caps_a_patient_and_keeps_sides_apart():
    raw, pid = _many_films(patients=120, seed=1)
    spec = EpisodeSpec(ways=2, shots=5, queries=10, images_per_patient=3)
    sampler = EpisodeSampler(raw, NAMES, NAMES, np.arange(len(pid)), spec, patients=pid)
    most = 0
    for i in range(300):
        ep = sampler.sample(np.random.default_rng(i))
        assert ep.images_per_patient == 3
        s_pat, q_pat = pid[ep.support_rows], pid[ep.query_rows]
        assert not np.isin(s_pat, q_pat).any()
        _, counts = np.unique(np.concatenate([s_pat, q_pat]), return_counts=True)
        assert counts.max() <= 3
        most = max(most, int(counts.max()))
        assert len(set(ep.support_rows) | set(ep.query_rows)) == len(ep.support_rows) + len(ep.query_rows)
    assert most == 3  # the cap is used, not just respected


def test_too_few_patients_names_the_class_the_count_and_what_to_lower():
    raw, pid = _many_films(patients=200)
    raw[:, 1] = 0
    few = np.isin(pid, ["P0000", "P0001", "P0002"])  # 3 patients with B, however many films they have
    raw[few, 1] = 1
    assert few.sum() > 15
    with pytest.raises(DataError, match=r"B: 3 patients") as err:
        EpisodeSampler(raw, NAMES, ["A", "B"], np.arange(len(pid)), EpisodeSpec(1, 5, 10), patients=pid)
    assert "15 patients" in str(err.value) and "--shots/--queries" in str(err.value.hint)
    assert "--images-per-patient" in str(err.value.hint)
    with pytest.raises(DataError, match=r"B: 3 patients, \d+ usable images"):
        EpisodeSampler(raw, NAMES, ["A", "B"], np.arange(len(pid)), EpisodeSpec(1, 5, 10, 4), patients=pid)
    # images capped at 8 per patient: 3 patients give 24 >= 5 + 10 + 7
    EpisodeSampler(raw, NAMES, ["A", "B"], np.arange(len(pid)), EpisodeSpec(1, 5, 10, 8), patients=pid)


def test_classes_a_model_learns_from_leave_out_the_short_ones_and_say_so(caplog):
    raw, pid = _many_films(patients=200)
    raw[:, 1] = 0
    raw[np.isin(pid, ["P0000", "P0001", "P0002"]), 1] = 1  # B: 3 patients
    rows, spec = np.arange(len(pid)), EpisodeSpec(2, 5, 10)
    with caplog.at_level("WARNING", logger="cxr_tools"):
        sampler = EpisodeSampler(raw, NAMES, ["A", "B", "C", "D"], rows, spec, patients=pid, drop_short=True)
    assert sampler.classes == ("A", "C", "D") and sampler.dropped == ("B",)
    assert "B (3 patients)" in caplog.text and "drawing from A, C, D" in caplog.text
    episodes = sampler.fixed_list(50, seed=0)
    assert all("B" not in ep.classes for ep in episodes)
    # evaluation (no drop_short) measures every class, so it still refuses
    with pytest.raises(DataError, match=r"B: 3 patients"):
        EpisodeSampler(raw, NAMES, ["A", "B", "C", "D"], rows, spec, patients=pid)
    # fewer than --ways classes left: the usual error names the short ones
    with pytest.raises(DataError, match=r"B: 3 patients"):
        EpisodeSampler(raw, NAMES, ["A", "B"], rows, spec, patients=pid, drop_short=True)


def test_single_label_classes_need_no_no_finding_class():
    classes = [f"digit{k}" for k in range(10)]
    raw = np.zeros((300, 10), dtype=np.float32)
    raw[np.arange(300), np.arange(300) % 10] = 1  # one label per image, no image without a class
    patients = np.arange(300).astype(str)
    sampler = EpisodeSampler(raw, classes, classes[:6], np.arange(300), EpisodeSpec(2, 5, 5), patients=patients)
    for ep in sampler.fixed_list(50, seed=0):
        cols = [classes.index(c) for c in ep.classes]
        negatives = np.concatenate([ep.support_rows[-5:], ep.query_rows[-5:]])
        assert not (raw[negatives][:, cols] == 1).any()
        assert (raw[negatives].sum(axis=1) == 1).all()  # negatives are images of the other classes
    two = np.flatnonzero(raw[:, :2].any(axis=1))  # a pool of two classes only: a 2-way episode has no negative
    with pytest.raises(DataError, match="Too few negatives"):
        EpisodeSampler(raw, classes, classes[:2], two, EpisodeSpec(2, 5, 5), patients=patients)


def test_a_class_combination_without_negatives_is_named():
    # A-only, B-only, A+C and two C-only patients: episodes of A + B have only the C-only images as negatives.
    raw = np.zeros((122, 3), dtype=np.float32)
    raw[:30, 0] = 1
    raw[30:60, 1] = 1
    raw[60:120, [0, 2]] = 1
    raw[120:, 2] = 1
    patients = np.arange(122).astype(str)
    with pytest.raises(DataError, match=r"A \+ B cannot be drawn: negatives: 2 patients"):
        EpisodeSampler(raw, ["A", "B", "C"], ["A", "B", "C"], np.arange(122), EpisodeSpec(2, 2, 2), patients=patients)


def test_shuffle_changes_slot_order_and_targets_follow_the_classes():
    raw = _labels()
    sampler = EpisodeSampler(
        raw, NAMES, NAMES, np.arange(400), EpisodeSpec(ways=2, shots=2, queries=3), patients=ONE_EACH
    )
    shuffled = [sampler.sample(np.random.default_rng(i), shuffle=True) for i in range(200)]
    orders = {ep.classes for ep in shuffled}
    assert ("A", "B") in orders and ("B", "A") in orders
    for ep in shuffled:
        cols = [NAMES.index(c) for c in ep.classes]
        np.testing.assert_array_equal(ep.support_targets, (raw[ep.support_rows][:, cols] == 1).astype(np.float32))
        np.testing.assert_array_equal(ep.query_targets, (raw[ep.query_rows][:, cols] == 1).astype(np.float32))
        for j in range(2):  # slot j's positives are the first rows of its block
            assert ep.support_targets[2 * j : 2 * j + 2, j].all()
    fixed = {ep.classes for ep in sampler.fixed_list(200, seed=0)}
    assert all(list(c) == sorted(c, key=NAMES.index) for c in fixed)  # evaluation keeps the split order


def test_pool_and_class_restrictions():
    raw = _labels()
    pool = np.arange(100, 400)
    sampler = EpisodeSampler(raw, NAMES, ["C", "D"], pool, EpisodeSpec(ways=2, shots=3, queries=3), patients=ONE_EACH)
    assert sampler.rows.tolist() == pool.tolist()
    for ep in sampler.fixed_list(20, seed=5):
        assert set(ep.classes) == {"C", "D"}
        assert np.all(np.concatenate([ep.support_rows, ep.query_rows]) >= 100)


def test_fixed_lists_are_reproducible_and_prefix_stable():
    raw = _labels()
    sampler = EpisodeSampler(
        raw, NAMES, NAMES, np.arange(400), EpisodeSpec(ways=2, shots=2, queries=4), patients=ONE_EACH
    )
    a = sampler.fixed_list(10, seed=3)
    b = sampler.fixed_list(4, seed=3)
    assert episode_list_hash(a[:4], "cache1") == episode_list_hash(b, "cache1")
    assert episode_list_hash(a, "cache1") != episode_list_hash(sampler.fixed_list(10, seed=4), "cache1")


def test_hash_covers_the_cache_fingerprint_and_images_per_patient():
    raw = _labels()
    spec = EpisodeSpec(ways=2, shots=2, queries=2)
    eps = EpisodeSampler(raw, NAMES, NAMES, np.arange(400), spec, patients=ONE_EACH).fixed_list(5, seed=0)
    assert episode_list_hash(eps, "cache1") != episode_list_hash(eps, "cache2")
    # one image per patient here, so a cap of 2 draws the same rows: the hash still tells the lists apart
    spec2 = EpisodeSpec(ways=2, shots=2, queries=2, images_per_patient=2)
    eps2 = EpisodeSampler(raw, NAMES, NAMES, np.arange(400), spec2, patients=ONE_EACH).fixed_list(5, seed=0)
    assert [e.to_dict() for e in eps2] == [e.to_dict() for e in eps]
    assert episode_list_hash(eps2, "cache1") != episode_list_hash(eps, "cache1")


def test_unknown_class_and_too_many_ways():
    raw = _labels()
    with pytest.raises(DataError, match="Zebra"):
        EpisodeSampler(raw, NAMES, ["Zebra"], np.arange(400), EpisodeSpec(), patients=ONE_EACH)
    with pytest.raises(DataError, match="--ways 3"):
        EpisodeSampler(
            raw, NAMES, ["A", "B"], np.arange(400), EpisodeSpec(ways=3, shots=1, queries=1), patients=ONE_EACH
        )
    with pytest.raises(DataError, match="--shots"):
        EpisodeSpec(shots=0)
    with pytest.raises(DataError, match="--images-per-patient"):
        EpisodeSpec(images_per_patient=0)


def test_save_load_roundtrip_and_tamper_detection(tmp_path):
    raw, pid = _many_films(patients=100)
    spec = EpisodeSpec(ways=2, shots=2, queries=2, images_per_patient=2)
    eps = EpisodeSampler(raw, NAMES, NAMES, np.arange(len(pid)), spec, patients=pid).fixed_list(5, seed=0)
    path = save_episode_list(tmp_path / "episodes.json", eps, {"seed": 0}, fingerprint="cache1")
    saved = json.loads(path.read_text())
    assert saved["version"] == EPISODE_LIST_VERSION == 2 and saved["images_per_patient"] == 2
    assert saved["cache_fingerprint"] == "cache1" and saved["hash"] == episode_list_hash(eps, "cache1")
    back = load_episode_list(path, raw, NAMES, fingerprint="cache1")
    assert episode_list_hash(back, "cache1") == episode_list_hash(eps, "cache1")
    assert back[0].images_per_patient == 2
    np.testing.assert_array_equal(back[2].query_targets, eps[2].query_targets)
    with pytest.raises(DataError, match="another cache"):
        load_episode_list(path, raw, NAMES, fingerprint="cache2")
    path.write_text(path.read_text().replace('"support_rows": [', f'"support_rows": [{len(pid) - 1}, ', 1))
    with pytest.raises(DataError, match="hash"):
        load_episode_list(path, raw, NAMES)


@pytest.mark.parametrize("version", [None, 1])
def test_old_format_lists_are_refused_with_a_way_out(tmp_path, version):
    raw = _labels()
    eps = EpisodeSampler(raw, NAMES, NAMES, np.arange(400), EpisodeSpec(2, 2, 2), patients=ONE_EACH).fixed_list(2, 0)
    path = save_episode_list(tmp_path / "episodes.json", eps, {}, fingerprint="cache1")
    data = json.loads(path.read_text())
    data.pop("version")
    if version is not None:
        data["version"] = version
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="made the old way") as err:
        load_episode_list(path, raw, NAMES)
    assert "--overwrite" in str(err.value.hint)


def test_slots_competing_for_the_same_patients_fail_with_one_clear_line():
    # D: patients 0-19, E: patients 5-24 (15 with both), 40 negatives; 15 patients per class cannot be disjoint.
    raw = np.zeros((65, 2), dtype=np.float32)
    raw[:20, 0] = 1
    raw[5:25, 1] = 1
    sampler = EpisodeSampler(raw, ["D", "E"], ["D", "E"], np.arange(65), EpisodeSpec(2, 5, 10), patients=ONE_EACH[:65])
    with pytest.raises(DataError, match=r"An episode of D \+ E: class E has \d+ patients left") as err:
        sampler.sample(np.random.default_rng(0))
    assert "--shots/--queries" in str(err.value.hint)
    # 10 per class can be drawn disjointly (a redraw finds a way when the first try is unlucky)
    ok = EpisodeSampler(raw, ["D", "E"], ["D", "E"], np.arange(65), EpisodeSpec(2, 4, 6), patients=ONE_EACH[:65])
    for ep in ok.fixed_list(20, seed=1):
        assert len(set(ep.support_rows) | set(ep.query_rows)) == 3 * 10
