"""Caches of several datasets: an NIH-layout and a CheXpert-layout phantom, preprocessed apart
and merged with ``cxr preprocess --merge``, keep a dataset column, dataset-qualified patient ids and canonical
labels; the merged cache meta-trains and evaluates with no patient shared across datasets, ``cxr stats`` counts
per dataset, and its content fingerprint and ``cxr stats --verify`` work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxr_tools.cli.app import app
from cxr_tools.data.caches.format import open_cache, verify_cache
from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.preprocess import MergeConfig, PreprocessConfig, merge, preprocess
from cxr_tools.errors import CacheError, ConfigError

runner = CliRunner()
SPLIT = "train=Atelectasis,Effusion;val=Consolidation,Edema;test=Cardiomegaly,Pneumothorax"
EPISODE = ["--ways", "2", "--shots", "2", "--queries", "2", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    """``nih`` and ``chexpert`` phantom caches at 32 px, and ``merged`` = both, joined by the CLI."""
    root = tmp_path_factory.mktemp("datasets")
    for layout in ("nih", "chexpert"):
        generate(SyntheticConfig(dest=root / f"{layout}-data", patients=160, size=32, layout=layout, seed=1))
        preprocess(PreprocessConfig(src=root / f"{layout}-data", output=root / layout, size=32, workers=0))
    res = runner.invoke(
        app, ["preprocess", "--merge", str(root / "nih"), str(root / "chexpert"), "-o", str(root / "m")]
    )
    assert res.exit_code == 0, res.output
    assert "synthetic-nih" in res.output and "synthetic-chexpert" in res.output
    return root


def test_the_merged_cache_qualifies_ids_keeps_splits_and_maps_labels(caches):
    nih, chex, merged = (open_cache(caches / n) for n in ("nih", "chexpert", "m"))
    index = merged.index
    assert len(merged) == len(nih) + len(chex)
    assert list(index["dataset"].unique()) == ["synthetic-nih", "synthetic-chexpert"]
    for name, source in (("synthetic-nih", nih), ("synthetic-chexpert", chex)):
        part = index[index["dataset"] == name].reset_index(drop=True)
        assert list(part["patient_id"]) == [f"{name}:{p}" for p in source.index["patient_id"]]
        assert list(part["split"]) == list(source.index["split"])  # each dataset keeps its own split
        rows = part["row"].to_numpy()
        np.testing.assert_array_equal(merged.read(rows[:20]), source.read(np.arange(20)))
    by_dataset = index.groupby("dataset")["patient_id"].apply(set)
    assert not by_dataset["synthetic-nih"] & by_dataset["synthetic-chexpert"]
    assert (index.groupby("patient_id")["split"].nunique() == 1).all()  # patient-disjoint splits
    # canonical labels: CheXpert's "Pleural Effusion" is NIH's "Effusion"; its own findings join the union
    assert "Effusion" in merged.labels and "Pleural Effusion" not in merged.labels
    assert {"Support Devices", "Infiltration"} <= set(merged.labels)
    chex_rows = index["dataset"] == "synthetic-chexpert"
    np.testing.assert_array_equal(
        index.loc[chex_rows, "Effusion"].to_numpy(dtype=float), chex.index["Pleural Effusion"].to_numpy(dtype=float)
    )
    assert index.loc[chex_rows, "Infiltration"].isna().all()  # a class CheXpert does not label: not mentioned
    counts = merged.manifest["counts"]["datasets"]
    assert counts == {
        "synthetic-nih": {"images": len(nih), "patients": nih.manifest["counts"]["patients"]},
        "synthetic-chexpert": {"images": len(chex), "patients": chex.manifest["counts"]["patients"]},
    }
    assert [d["name"] for d in merged.manifest["source"]["datasets"]] == ["synthetic-nih", "synthetic-chexpert"]


def test_fingerprint_verify_and_stats_per_dataset(caches, tmp_path):
    merged = open_cache(caches / "m")
    again = merge(MergeConfig(shards=(caches / "nih", caches / "chexpert"), output=tmp_path / "again"))
    assert again.datasets == {
        "synthetic-nih": len(open_cache(caches / "nih")),
        "synthetic-chexpert": len(open_cache(caches / "chexpert")),
    }
    assert open_cache(tmp_path / "again").fingerprint == merged.fingerprint  # content-addressed: same merge, same id
    assert verify_cache(caches / "m") == []
    res = runner.invoke(app, ["stats", str(caches / "m"), "--verify"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["stats", str(caches / "m"), "-o", str(tmp_path / "stats"), "--no-plots", "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert set(stats["datasets"]) == {"synthetic-nih", "synthetic-chexpert"}
    assert sum(d["images"] for d in stats["datasets"].values()) == stats["n_images"] == len(merged)
    assert "Infiltration" not in stats["datasets"]["synthetic-chexpert"]["positives"]
    table = runner.invoke(app, ["stats", str(caches / "m"), "-o", str(tmp_path / "stats"), "--no-plots"])
    assert "Datasets" in table.output and "synthetic-chexpert" in table.output


def test_a_merged_cache_meta_trains_and_evaluates_across_datasets(caches, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "meta-train",
            str(caches / "m"),
            "-o",
            str(run),
            "--meta-split",
            SPLIT,
            *EPISODE,
            "--backbone",
            "conv4-tiny",
            "--episodes",
            "4",
            "--meta-batch",
            "2",
            "--val-every",
            "2",
            "--val-episodes",
            "2",
            "--adapt-steps",
            "1",
            "--engine",
            "func",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    sets = json.loads((run / "model" / "lineage_patients.json").read_text())["sets"]
    trained = {p for ids in sets.values() for p in ids}
    assert {p.split(":")[0] for p in trained} == {"synthetic-nih", "synthetic-chexpert"}  # it saw both datasets
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--data",
            str(caches / "m"),
            "-o",
            str(out),
            *EPISODE,
            "--episodes",
            "3",
            "--no-plots",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output  # the lineage check passed: no meta-test patient was trained on
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["Cardiomegaly", "Pneumothorax"] and summary["episodes"] == 3
    index = open_cache(caches / "m").index.set_index("row")
    episodes = json.loads((out / "episodes.json").read_text())["episodes"]
    used = {index.loc[r, "patient_id"] for ep in episodes for r in ep["support_rows"] + ep["query_rows"]}
    assert not used & trained


def test_caches_that_cannot_be_merged_are_refused_before_any_output(caches, tmp_path):
    preprocess(PreprocessConfig(src=caches / "nih-data", output=tmp_path / "small", size=24, workers=0))
    with pytest.raises(CacheError, match="size"):
        merge(MergeConfig(shards=(caches / "nih", tmp_path / "small"), output=tmp_path / "out"))
    with pytest.raises(CacheError, match="synthetic-nih"):
        merge(MergeConfig(shards=(caches / "m", caches / "nih"), output=tmp_path / "out"))
    preprocess(PreprocessConfig(src=caches / "nih-data", output=tmp_path / "part", size=32, workers=0, shard="0/2"))
    with pytest.raises(ConfigError, match="shard caches and whole caches"):
        merge(MergeConfig(shards=(tmp_path / "part", caches / "chexpert"), output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_split_class_one_merged_dataset_does_not_label_is_named_in_a_warning(caches, caplog):
    """CheXpert does not label Infiltration: on its rows the class is empty, which reads as negative, so a
    meta-split using it on the merged cache is warned about (and one using shared classes is not)."""
    from cxr_tools.data.caches.datasets import unlabelled_classes
    from cxr_tools.data.splits.meta import resolve_meta_split

    merged = open_cache(caches / "m")
    assert unlabelled_classes(merged.manifest, ["Effusion", "Infiltration"]) == {"synthetic-chexpert": ["Infiltration"]}
    assert unlabelled_classes(open_cache(caches / "nih").manifest, ["Infiltration"]) == {}  # one dataset: nothing
    with caplog.at_level("WARNING"):
        resolve_meta_split(SPLIT, merged.path, merged.labels, merged.manifest)
    assert "do not all label" not in caplog.text
    with caplog.at_level("WARNING"):
        resolve_meta_split(SPLIT.replace("Atelectasis", "Infiltration"), merged.path, merged.labels, merged.manifest)
    assert "synthetic-chexpert does not label Infiltration" in caplog.text
