"""Meta-splits: class-disjoint class sets, disjoint image and patient pools, parsing and saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cache_factory import NIH_SAMPLE, make_index, nih_sample_index

from cxr_tools.data.labels import NIH_LABELS
from cxr_tools.data.splits.meta import (
    META_SPLIT_FILE,
    METACHEST,
    MetaSplit,
    load_meta_split,
    meta_split_pools,
    parse_meta_split,
    save_meta_split,
)
from cxr_tools.errors import ConfigError, DataError, InputError


def _random_meta_split(rng: np.random.Generator, labels=NIH_LABELS) -> MetaSplit:
    perm = list(rng.permutation(labels))
    a = int(rng.integers(1, len(labels) - 1))
    b = int(rng.integers(a + 1, len(labels)))
    end = int(rng.integers(b + 1, len(labels) + 1))
    return MetaSplit(tuple(perm[:a]), tuple(perm[a:b]), tuple(perm[b:end]))


def _random_index(rng: np.random.Generator, n: int = 400):
    values = (rng.random((n, len(NIH_LABELS))) < 0.06).astype(np.float32)
    values[rng.random(values.shape) < 0.02] = -1  # some uncertain entries
    values[rng.random(values.shape) < 0.05] = np.nan
    patients = [f"p{int(p)}" for p in rng.integers(0, n // 2, n)]
    return make_index(n, NIH_LABELS, values=values, patients=patients)


def _carries(index, rows, classes):
    sub = index.set_index("row").loc[rows, list(classes)].to_numpy(dtype=np.float32, na_value=np.nan)
    return ((sub == 1) | (sub == -1)).any(axis=1)


@pytest.mark.parametrize("seed", range(40))
def test_any_user_split_gives_class_image_and_patient_disjoint_pools(seed):
    rng = np.random.default_rng(seed)
    split = parse_meta_split(_random_meta_split(rng).to_dict(), labels=NIH_LABELS)
    index = _random_index(rng)
    pools = meta_split_pools(index, NIH_LABELS, split, seed=seed)
    # classes
    assert not set(split.train) & set(split.test) and not set(split.train) & set(split.val)
    assert not set(split.val) & set(split.test)
    # images: every row in exactly one pool
    all_rows = np.concatenate(list(pools.values()))
    assert len(all_rows) == len(set(all_rows.tolist())) == len(index)
    # patients
    by_pool = {k: set(index.set_index("row").loc[v, "patient_id"]) for k, v in pools.items()}
    assert not by_pool["train"] & by_pool["test"] and not by_pool["train"] & by_pool["val"]
    assert not by_pool["val"] & by_pool["test"]
    # no leaked findings: meta-train images carry no val/test class, meta-val images no test class
    assert not _carries(index, pools["train"], split.val + split.test).any()
    assert not _carries(index, pools["val"], split.test).any()


def test_metachest_default_and_negatives_reach_every_pool():
    rng = np.random.default_rng(0)
    index = _random_index(rng, 600)
    pools = meta_split_pools(index, NIH_LABELS, parse_meta_split(None), seed=1)
    nih = METACHEST.resolve(NIH_LABELS)  # MetaChest's split without Lung Opacity, which NIH lacks
    for name, rows in pools.items():
        negatives = ~_carries(index, rows, nih.all_classes)
        assert negatives.sum() > 0, name
        positives = _carries(index, rows, nih.classes(name))
        assert positives.sum() > 0, name
    assert {k: v.tolist() for k, v in meta_split_pools(index, NIH_LABELS, METACHEST, seed=1).items()} == {
        k: v.tolist() for k, v in pools.items()
    }


def test_patient_rule_moves_whole_patient_to_the_highest_tier():
    # patient x: one Effusion (meta-train) image and one Cardiomegaly (meta-test) image -> all in meta-test
    values = np.zeros((5, len(NIH_LABELS)), dtype=np.float32)
    values[0, NIH_LABELS.index("Effusion")] = 1
    values[1, NIH_LABELS.index("Cardiomegaly")] = 1
    values[2, NIH_LABELS.index("Hernia")] = -1  # uncertain meta-val finding counts as carried
    values[3, NIH_LABELS.index("Mass")] = 1
    index = make_index(5, NIH_LABELS, values=values, patients=["x", "x", "y", "z", "w"])
    pools = meta_split_pools(index, NIH_LABELS, METACHEST)
    assert pools["test"].tolist()[:2] == [0, 1]
    assert 2 in pools["val"] and 3 in pools["train"]


def test_meta_split_validation_errors():
    with pytest.raises(ConfigError, match="share"):
        MetaSplit(("A", "B"), ("B",), ("C",))
    with pytest.raises(ConfigError, match="empty"):
        MetaSplit(("A",), (), ("C",))
    with pytest.raises(ConfigError, match="more than once"):
        MetaSplit(("A", "A"), ("B",), ("C",))
    with pytest.raises(ConfigError, match=r"Lung Lesion.*not in the label space"):
        parse_meta_split({"train": ["Effusion"], "val": ["Hernia"], "test": ["Lung Lesion"]}, labels=NIH_LABELS)
    with pytest.raises(ConfigError, match="missing val"):
        parse_meta_split({"train": ["A"], "test": ["B"]})


def test_parse_inline_file_and_aliases(tmp_path):
    inline = parse_meta_split("train=Effusion,Mass;val=Hernia;test=Pleural Effusion_x", labels=None)
    assert inline.test == ("Pleural Effusion_x",)
    resolved = parse_meta_split("train=pleural effusion,Mass;val=Hernia;test=Edema", labels=NIH_LABELS)
    assert resolved.train == ("Effusion", "Mass")  # CheXpert spelling found NIH's label
    yml = tmp_path / "split.yaml"
    yml.write_text("name: mine\ntrain: [Effusion, Mass]\nval: [Hernia]\ntest: [Edema, Pneumonia]\n")
    from_yaml = parse_meta_split(yml, labels=NIH_LABELS)
    assert from_yaml.name == "mine" and from_yaml.test == ("Edema", "Pneumonia")
    js = tmp_path / "split.json"
    js.write_text(json.dumps({"meta-train": ["A"], "meta-val": ["B"], "meta-test": ["C"]}))
    assert parse_meta_split(str(js)).val == ("B",)
    with pytest.raises(InputError, match="does not exist"):
        parse_meta_split(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        parse_meta_split(bad)


def test_save_and_load_round_trip(tmp_path):
    assert load_meta_split(tmp_path) is None
    path = save_meta_split(tmp_path, METACHEST, labels=NIH_LABELS)
    assert path == tmp_path / META_SPLIT_FILE
    assert load_meta_split(tmp_path) == METACHEST.resolve(NIH_LABELS)  # Lung Opacity left out on NIH
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary left behind
    with pytest.raises(ConfigError):
        save_meta_split(tmp_path, MetaSplit(("X",), ("Y",), ("Z",)), labels=NIH_LABELS)
    assert load_meta_split(tmp_path) == METACHEST.resolve(NIH_LABELS)  # failed save left the old file
    (tmp_path / META_SPLIT_FILE).write_text('{"version": 99}')
    with pytest.raises(DataError, match="unsupported"):
        load_meta_split(tmp_path)


@pytest.mark.skipif(not NIH_SAMPLE.is_file(), reason="tests/fixtures NIH CSV excerpt not copied yet")
def test_real_nih_excerpt_pools():
    index = nih_sample_index()
    pools = meta_split_pools(index, NIH_LABELS, METACHEST, seed=0)
    assert sum(len(v) for v in pools.values()) == len(index)
    assert not _carries(index, pools["train"], METACHEST.val + METACHEST.test).any()
    for rows in pools.values():
        assert len(rows) > 0


def test_metachest_is_the_papers_split_with_lung_opacity_where_the_labels_have_it():
    """Montalvo-Lezama & Fuentes-Pineda (2026), mtrn / mval / mtst of their repository's config.toml."""
    paper = {
        "train": {"Effusion", "Lung Opacity", "Atelectasis", "Infiltration", "Nodule", "Mass", "Pleural_Thickening"},
        "val": {"Emphysema", "Fibrosis", "Hernia"},
        "test": {"Cardiomegaly", "Edema", "Pneumothorax", "Consolidation", "Pneumonia"},
    }
    assert {k: set(METACHEST.classes(k)) for k in paper} == paper
    nih = parse_meta_split("metachest", NIH_LABELS)
    assert set(nih.train) == paper["train"] - {"Lung Opacity"} and set(nih.test) == paper["test"]
    merged = parse_meta_split("metachest", [*NIH_LABELS, "Lung Opacity"])
    assert "Lung Opacity" in merged.train
    with pytest.raises(ConfigError, match="not in the label space"):
        parse_meta_split("metachest", [c for c in NIH_LABELS if c != "Hernia"])  # only Lung Opacity may be absent
