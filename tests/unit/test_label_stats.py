"""compute_stats (factorised codes) against a row-by-row reference, and the co-occurrence plot's cell labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cache_factory import make_index

from cxr_tools.data.caches.label_stats import compute_stats

LABELS = ("A", "B", "C", "D")
# blanks and padded names must merge ("" → unassigned / unknown, " val" → val); > 16 views with tied counts
SPLITS = ["train", "train", " val", "val", "test ", "", "  ", "extra", "aux"]
VIEWS = ["PA", " PA", "AP", "", "Lateral", *[f"v{k:02d}" for k in range(16)]]


def reference(index: Any, labels: tuple[str, ...]) -> dict[str, Any]:
    """The numbers computed the slow, obvious way: one pass over the rows with Python sets and counters."""
    order = ["train", "val", "test", "unassigned"]
    rows = []
    for _, r in index.iterrows():
        text = {k: "" if pd.isna(r[k]) else str(r[k]) for k in ("patient_id", "split", "view")}  # missing = blank
        split = text["split"].strip() or "unassigned"
        view = text["view"].strip() or "unknown"
        rows.append((text["patient_id"], split, view, [r[lab] for lab in labels]))
    splits = sorted({s for _, s, _, _ in rows}, key=lambda s: (order.index(s) if s in order else len(order), s))
    per_label = []
    for j, label in enumerate(labels):
        pos = [(p, s) for p, s, _, v in rows if v[j] == 1]
        per_label.append(
            {
                "label": label,
                "images": len(pos),
                "patients": len({p for p, _ in pos}),
                "uncertain": sum(1 for *_, v in rows if v[j] == -1),
                "split_images": {s: sum(1 for _, t in pos if t == s) for s in splits},
                "split_patients": {s: len({p for p, t in pos if t == s}) for s in splits},
            }
        )
    n_pos = [sum(1 for x in v if x == 1) for *_, v in rows]
    per_image = Counter(n_pos)
    views = Counter(view for _, _, view, _ in rows)  # first-seen order for ties, then most frequent first
    return {
        "n_images": len(rows),
        "n_patients": len({p for p, *_ in rows}),
        "labels": per_label,
        "no_positive_images": n_pos.count(0),
        "labels_per_image": {k: per_image[k] for k in sorted(per_image)},
        "splits": {
            s: {
                "images": sum(1 for _, t, _, _ in rows if t == s),
                "patients": len({p for p, t, _, _ in rows if t == s}),
            }
            for s in splits
        },
        "views": dict(sorted(views.items(), key=lambda kv: -kv[1])),
        "cooccurrence": tuple(
            tuple(sum(1 for *_, v in rows if v[a] == 1 and v[b] == 1) for b in range(len(labels)))
            for a in range(len(labels))
        ),
        "datasets": per_dataset_reference(index, labels, [s for _, s, _, _ in rows]),
    }


def per_dataset_reference(index: Any, labels: tuple[str, ...], splits: list[str]) -> dict[str, Any]:
    if "dataset" not in index.columns:
        return {}
    out: dict[str, Any] = {}
    for i, (_, r) in enumerate(index.iterrows()):
        d = out.setdefault(str(r["dataset"]), {"images": 0, "patients": set(), "splits": Counter(), "values": []})
        d["images"] += 1
        d["patients"].add("" if pd.isna(r["patient_id"]) else str(r["patient_id"]))
        d["splits"][splits[i]] += 1
        d["values"].append([r[lab] for lab in labels])
    return {
        name: {
            "images": d["images"],
            "patients": len(d["patients"]),
            "splits": dict(d["splits"]),
            "positives": {
                lab: sum(1 for v in d["values"] if v[j] == 1)
                for j, lab in enumerate(labels)
                if any(not pd.isna(v[j]) for v in d["values"])
            },
        }
        for name, d in out.items()
    }


def as_plain(numbers: dict[str, Any]) -> dict[str, Any]:
    out = dict(numbers)
    out["labels"] = [asdict(s) for s in numbers["labels"]]
    out["splits"] = {k: asdict(v) for k, v in numbers["splits"].items()}
    out["datasets"] = {k: asdict(v) for k, v in numbers["datasets"].items()}
    return out


def random_index(seed: int, n: int = 240, labels: tuple[str, ...] = LABELS) -> Any:
    rng = np.random.default_rng(seed)
    values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, len(labels)), p=[0.3, 0.5, 0.1, 0.1])
    index = make_index(
        n,
        labels,
        values=values,
        patients=[f"{k:04d}" for k in rng.integers(0, n // 5, n)],  # ids with leading zeros, some in two splits
        splits=list(rng.choice(SPLITS, n)),
        views=list(rng.choice(VIEWS, n)),
    )
    for col in ("patient_id", "split", "view"):  # a few missing values (read_index makes them blank)
        index.loc[rng.choice(n, 3, replace=False), col] = None
    return index


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_row_by_row_reference(seed):
    index = random_index(seed)
    got = as_plain(compute_stats(index, list(LABELS)))
    want = reference(index, LABELS)
    assert got == want
    assert list(got["views"]) == list(want["views"]) and list(got["splits"]) == list(want["splits"])  # order too


def test_counts_per_dataset_match_the_reference():
    """A cache of several datasets: a label one dataset does not mark (all empty on its rows) is left out of its
    positives."""
    index = random_index(4)
    index["dataset"] = ["nih" if i % 3 else "chexpert" for i in range(len(index))]
    index.loc[index["dataset"] == "chexpert", LABELS[0]] = np.nan
    got = as_plain(compute_stats(index, list(LABELS)))
    assert got == reference(index, LABELS)
    assert set(got["datasets"]) == {"nih", "chexpert"} and LABELS[0] not in got["datasets"]["chexpert"]["positives"]
    assert sum(d["images"] for d in got["datasets"].values()) == len(index)


def test_no_labels_and_no_rows():
    index = random_index(3)
    assert as_plain(compute_stats(index, [])) == reference(index, ())
    empty = index.iloc[:0]
    got = as_plain(compute_stats(empty, list(LABELS)))
    assert got == reference(empty, LABELS)
    assert got["n_patients"] == 0 and got["splits"] == {} and got["views"] == {}


def test_count_labels_are_centred_on_their_cells(tmp_path):
    """Each count of the co-occurrence plot is one outline collection, centred on its cell (within a pixel or two)."""
    from cxr_tools.eval.plots import _cell_labels, new_figure

    fig = new_figure(2.0, 2.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_axis_off()
    _cell_labels(ax, ["8808", "1"], np.array([[-0.5, 0.5], [0.5, -0.5]]), ["black", "black"], fontsize=20)
    fig.canvas.draw()
    ink = np.asarray(fig.canvas.buffer_rgba())[..., 0] < 128  # black glyphs on white
    h, w = ink.shape
    for rows, cols in ((slice(0, h // 2), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))):
        ys, xs = np.nonzero(ink[rows, cols])  # the quarter the label's point is the centre of
        assert len(xs) > 20  # the digits were drawn
        assert abs((xs.min() + xs.max()) / 2 - w / 4) <= 2 and abs((ys.min() + ys.max()) / 2 - h / 4) <= 2
