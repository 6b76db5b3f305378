"""benchmarks/scale.py's synthetic NIH: the row and patient counts asked for, NIH's label statistics, a real
NIH layout the project's reader accepts (the benchmark's figures are only as good as this data)."""

from __future__ import annotations

import numpy as np
from script_modules import REPO, load_script

from cxr_tools.data.sources import load_source

scale = load_script(REPO / "benchmarks" / "scale.py", "bench_scale")


def test_images_per_patient_sum_and_tail():
    counts = scale.images_per_patient(np.random.default_rng(0), scale.NIH_IMAGES, scale.NIH_PATIENTS)
    assert len(counts) == scale.NIH_PATIENTS and counts.sum() == scale.NIH_IMAGES and counts.min() >= 1
    assert np.median(counts) <= 3 and counts.max() >= 30  # most patients have few images, some have dozens


def test_findings_follow_nih_frequencies():
    cells = scale.findings(np.random.default_rng(0), 40_000)
    assert abs(sum(c == "No Finding" for c in cells) / len(cells) - scale.NO_FINDING / scale.NIH_IMAGES) < 0.01
    for label, count in scale.NIH_COUNTS.items():  # drawn without replacement: each within 15 % of NIH's
        share = sum(label in c.split("|") for c in cells) / len(cells)
        assert abs(share / (count / scale.NIH_IMAGES) - 1) < 0.15, label


def test_dataset_is_an_nih_layout_of_hard_links(tmp_path):
    root = scale.make_dataset(tmp_path / "nih", 600, 165, pool_side=16)
    table = load_source(root, "auto", views="all")
    assert table.kind == "nih" and len(table) == 600 and table.table["patient_id"].nunique() == 165
    first = root / "images" / table.table["image_id"].iloc[0]
    assert first.stat().st_nlink > 1  # a hard link into the pool: the point is the row count
