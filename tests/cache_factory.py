"""Tiny real caches for tests: an image store, an ``index.csv`` and a manifest, written with the real writers.

Import as ``from cache_factory import make_cache`` (``tests/`` is on pytest's ``pythonpath``).

* :func:`make_index` builds an index DataFrame (meta columns + raw label columns).
* :func:`make_cache` writes a complete cache (HDF5 or memmap) from an index or from ``n`` + labels.
* :func:`nih_sample_index` / :func:`chexpert_sample_index` turn the real CSV excerpts in ``tests/fixtures``
  into index DataFrames, for realistic label distributions (multi-label NIH, uncertain CheXpert values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tools.data.caches.format import (
    INDEX,
    INDEX_META_COLUMNS,
    PIXELS_DIGEST,
    ImageStoreWriter,
    pixel_digest,
    write_manifest,
)
from cxr_tools.data.labels import CHEXPERT_LABELS, NIH_LABELS, parse_nih_findings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NIH_SAMPLE = FIXTURES / "nih_Data_Entry_2017_v2020.sample.csv"
CHEXPERT_SAMPLE = FIXTURES / "chexpert_train.sample.csv"


def make_index(
    n: int,
    labels: Sequence[str] = ("A", "B"),
    *,
    values: Any = None,
    patients: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    positive_rate: float = 0.3,
    seed: int = 0,
) -> pd.DataFrame:
    """An index DataFrame of ``n`` rows in storage order.

    Args:
        values: raw label values [n, L] (1, 0, -1, NaN); default random 1/0 with ``positive_rate``.
        patients: patient id per row; default two images per patient.
        splits: split per row; default all ``train``.
        views: view per row; default alternating PA / AP.
    """
    rng = np.random.default_rng(seed)
    if values is None:
        values = (rng.random((n, len(labels))) < positive_rate).astype(np.float32)
    values = np.asarray(values, dtype=np.float32).reshape(n, len(labels))
    data: dict[str, Any] = {
        "row": np.arange(n),
        "image_id": [f"{i:08d}_000.png" for i in range(n)],
        "source_path": [f"images/{i:08d}_000.png" for i in range(n)],
        "patient_id": list(patients) if patients is not None else [f"{i // 2:05d}" for i in range(n)],
        "study": [""] * n,
        "view": list(views) if views is not None else ["PA" if i % 2 == 0 else "AP" for i in range(n)],
        "sex": ["M" if i % 3 else "F" for i in range(n)],
        "age": [30 + i % 50 for i in range(n)],
        "split": list(splits) if splits is not None else ["train"] * n,
    }
    for j, label in enumerate(labels):
        data[label] = values[:, j]
    return pd.DataFrame(data, columns=[*INDEX_META_COLUMNS, *labels])


def default_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 [n, size, size] images: a vertical gradient plus noise, distinct per row."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size, dtype=np.float32)[:, None]
    imgs = ramp[None] + rng.normal(0, 10, (n, size, size)) + np.arange(n)[:, None, None] % 30
    return np.clip(imgs, 0, 255).astype(np.uint8)


def make_cache(
    tmp_path: Path,
    n: int | None = None,
    labels: Sequence[str] = ("A", "B"),
    *,
    index: pd.DataFrame | None = None,
    images: np.ndarray | None = None,
    storage: str = "hdf5",
    size: int = 32,
    name: str = "cache",
    manifest: dict[str, Any] | None = None,
    seed: int = 0,
    digest: bool = True,
    **index_kwargs: Any,
) -> Path:
    """Write a complete cache under ``tmp_path / name`` and return its directory.

    Give either ``index`` (a DataFrame as from :func:`make_index`; its label columns are ``labels``) or
    ``n`` (then :func:`make_index` is called with ``labels`` and ``index_kwargs``). ``digest`` records the pixel
    digest as ``cxr preprocess`` does (False: a cache from before digests were recorded).
    """
    path = Path(tmp_path) / name
    path.mkdir(parents=True, exist_ok=True)
    if index is None:
        if n is None:
            raise ValueError("make_cache needs n or index")
        index = make_index(n, labels, seed=seed, **index_kwargs)
    n = len(index)
    if images is None:
        images = default_images(n, size, seed)
    images = np.asarray(images, dtype=np.uint8)
    with ImageStoreWriter(path, storage, n, images.shape[1], images.shape[2]) as store:
        store.write_block(0, images)
    index = index.copy()
    index["row"] = np.arange(n)
    index.to_csv(path / INDEX, index=False)
    data = {
        "source": "test",
        "storage": storage,
        "labels": list(labels),
        "image_size": [int(images.shape[1]), int(images.shape[2])],
        "dtype": "uint8",
        "counts": {"images": n},
        **({PIXELS_DIGEST: pixel_digest(path, storage)} if digest else {}),
        **(manifest or {}),
    }
    write_manifest(path, data)
    return path


def nih_sample_index(path: Path = NIH_SAMPLE) -> pd.DataFrame:
    """The real NIH v2020 CSV excerpt as an index (multi-hot, empty split, real patients and views)."""
    df = pd.read_csv(path, dtype={"Patient ID": str})
    findings = [parse_nih_findings(c) for c in df["Finding Labels"]]
    values = np.array([[1.0 if lab in f else 0.0 for lab in NIH_LABELS] for f in findings], dtype=np.float32)
    out = make_index(
        len(df),
        NIH_LABELS,
        values=values,
        patients=[f"{int(p):08d}" for p in df["Patient ID"]],
        splits=[""] * len(df),
        views=list(df["View Position"].astype(str)),
    )
    out["image_id"] = df["Image Index"].astype(str).to_numpy()
    out["source_path"] = ("images/" + df["Image Index"].astype(str)).to_numpy()
    out["sex"] = df["Patient Gender"].astype(str).to_numpy()
    out["age"] = df["Patient Age"].to_numpy()
    return out


def chexpert_sample_index(path: Path = CHEXPERT_SAMPLE) -> pd.DataFrame:
    """The real CheXpert train.csv excerpt as an index (raw 1/0/-1/NaN, patient from the path)."""
    df = pd.read_csv(path)
    patients = [re.search(r"(patient\d+)", p).group(1) for p in df["Path"]]  # type: ignore[union-attr]
    studies = [re.search(r"(study\d+)", p).group(1) for p in df["Path"]]  # type: ignore[union-attr]
    out = make_index(
        len(df),
        CHEXPERT_LABELS,
        values=df[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32),
        patients=patients,
        splits=[""] * len(df),
        views=[
            str(v) if fl == "Frontal" and isinstance(v, str) else "Lateral"
            for fl, v in zip(df["Frontal/Lateral"], df["AP/PA"], strict=True)
        ],
    )
    out["study"] = studies
    out["source_path"] = df["Path"].astype(str).to_numpy()
    out["sex"] = df["Sex"].astype(str).str[:1].to_numpy()
    out["age"] = df["Age"].to_numpy()
    return out


def table_row(table: pd.DataFrame, image_id: str) -> pd.Series:
    """The one row of an index or source table with this ``image_id`` (fails when there is not exactly one)."""
    match = table[table["image_id"] == image_id]
    assert len(match) == 1, image_id
    return match.iloc[0]
