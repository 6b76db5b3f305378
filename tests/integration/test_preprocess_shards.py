"""``--shard i/n`` partial caches merged with ``merge`` equal one unsharded run."""

from __future__ import annotations

import shutil

import pytest
from preprocess_fixtures import add_bad_inputs, assert_same_cache, cache_contents, make_nih

from cxr_tools.data.caches.shards import parse_shard, shard_range
from cxr_tools.engine.preprocess import MergeConfig, PreprocessConfig, merge, preprocess
from cxr_tools.errors import CacheError, ConfigError, OutputExistsError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    src = make_nih(tmp_path_factory.mktemp("nih"), patients=9, per_patient=3)
    add_bad_inputs(src)
    return src


@pytest.mark.parametrize("storage", ["hdf5", "memmap"])
def test_shards_merge_to_the_unsharded_cache(dataset, tmp_path, storage):
    whole = tmp_path / "whole"
    preprocess(PreprocessConfig(src=dataset, output=whole, size=32, workers=0, format=storage))
    parts = []
    for i in (2, 0, 1, 3):  # any order, as array tasks finish
        part = tmp_path / f"part{i}"
        r = preprocess(PreprocessConfig(src=dataset, output=part, size=32, workers=0, format=storage, shard=f"{i}/4"))
        assert r.shard == f"{i}/4"
        parts.append(part)
    sizes = [cache_contents(p)[0].shape[0] for p in sorted(parts)]
    assert all(s > 0 for s in sizes)
    merged = tmp_path / "merged"
    result = merge(MergeConfig(shards=tuple(parts), output=merged))
    assert result.images == sum(sizes) == cache_contents(whole)[0].shape[0]
    assert result.rejected == 6
    assert_same_cache(merged, whole)


def test_merge_refuses_incomplete_or_mixed_shards(dataset, tmp_path):
    parts = []
    for i in range(3):
        part = tmp_path / f"p{i}"
        preprocess(PreprocessConfig(src=dataset, output=part, size=32, workers=0, shard=f"{i}/3"))
        parts.append(part)
    with pytest.raises(CacheError, match=r"not exactly shards 0\.\.2"):
        merge(MergeConfig(shards=tuple(parts[:2]), output=tmp_path / "m"))
    with pytest.raises(CacheError, match="not exactly"):
        merge(MergeConfig(shards=(parts[0], parts[0], parts[1], parts[2]), output=tmp_path / "m"))
    other = tmp_path / "other"
    preprocess(PreprocessConfig(src=dataset, output=other, size=48, workers=0, shard="2/3"))
    with pytest.raises(CacheError, match="other settings"):
        merge(MergeConfig(shards=(parts[0], parts[1], other), output=tmp_path / "m"))
    whole = tmp_path / "whole"
    preprocess(PreprocessConfig(src=dataset, output=whole, size=32, workers=0))
    with pytest.raises(CacheError, match="not a shard"):
        merge(MergeConfig(shards=(whole,), output=tmp_path / "m"))
    (parts[1] / "manifest.json").unlink()
    with pytest.raises(CacheError, match="incomplete"):
        merge(MergeConfig(shards=tuple(parts), output=tmp_path / "m"))
    shutil.rmtree(parts[1])
    preprocess(PreprocessConfig(src=dataset, output=parts[1], size=32, workers=0, shard="1/3"))
    merge(MergeConfig(shards=tuple(parts), output=tmp_path / "m"))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        merge(MergeConfig(shards=tuple(parts), output=tmp_path / "m"))
    merge(MergeConfig(shards=tuple(parts), output=tmp_path / "m", overwrite=True))
    assert_same_cache(tmp_path / "m", whole)


def test_shard_ranges_cover_every_input_once():
    for total in (0, 1, 7, 100):
        for n in (1, 3, 8):
            ranges = [shard_range(total, (i, n)) for i in range(n)]
            covered = [k for a, b in ranges for k in range(a, b)]
            assert covered == list(range(total))
    assert parse_shard("3/4") == (3, 4) and parse_shard(None) is None
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_more_shards_than_images(tmp_path):
    src = make_nih(tmp_path / "nih", patients=1, per_patient=2)
    parts = []
    for i in range(4):
        part = tmp_path / f"p{i}"
        preprocess(PreprocessConfig(src=src, output=part, size=32, workers=0, shard=f"{i}/4", format="memmap"))
        parts.append(part)
    assert [cache_contents(p)[0].shape[0] for p in parts] == [0, 1, 0, 1]
    merge(MergeConfig(shards=tuple(parts), output=tmp_path / "m"))
    preprocess(PreprocessConfig(src=src, output=tmp_path / "w", size=32, workers=0, format="memmap"))
    assert_same_cache(tmp_path / "m", tmp_path / "w")


def test_shard_from_the_slurm_array_environment():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert parse_shard("slurm", env) == (2, 4)
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"}
    assert parse_shard("slurm", env) == (2, 4)
    with pytest.raises(ConfigError, match="SLURM array job"):
        parse_shard("slurm", {})
