"""Episodes addressed by the cache's content: a byte-identical re-preprocessed cache gives the
same episodes and ``cxr compare`` accepts it; a cache whose pixels or labels differ is refused, naming what."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from cache_factory import make_cache, make_index
from evaluate_factory import LABELS, make_eval_cache

from cxr_tools.data.caches.format import INDEX, MANIFEST, PIXELS_DIGEST, open_cache, pixel_digest
from cxr_tools.data.synthetic import SyntheticConfig, generate
from cxr_tools.engine.compare import CompareConfig, compare
from cxr_tools.engine.evaluate import EvaluateConfig, evaluate
from cxr_tools.engine.preprocess import PreprocessConfig, preprocess
from cxr_tools.errors import DataError

#: Tiny pixel-baseline evaluations: no run, no network, a few episodes.
PIXELS = {"method": "pixels", "episodes": 3, "shots": 1, "queries": 2, "device": "cpu", "plots": False, "bootstrap": 0}


def _evaluate(cache, out, **extra):
    return evaluate(EvaluateConfig(data=cache, output=out, **{**PIXELS, **extra}))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The phantom, preprocessed twice (other source folder, other storage kind), once with one pixel changed."""
    root = tmp_path_factory.mktemp("content")
    generate(SyntheticConfig(dest=root / "data", patients=300, size=32, seed=0))
    shutil.copytree(root / "data", root / "copy")
    shutil.copytree(root / "data", root / "touched")
    png = sorted((root / "touched" / "images").glob("*.png"))[0]
    image = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    image[16, 16] = (int(image[16, 16]) + 128) % 256
    cv2.imwrite(str(png), image)
    preprocess(PreprocessConfig(src=root / "data", output=root / "a", size=32, workers=0))
    preprocess(PreprocessConfig(src=root / "copy", output=root / "b", size=32, workers=0, format="memmap"))
    preprocess(PreprocessConfig(src=root / "touched", output=root / "c", size=32, workers=0))
    _evaluate(root / "a", root / "eval-a")
    return root


def test_a_reprocessed_identical_cache_gives_the_same_episodes_and_compares(phantom):
    a, b = open_cache(phantom / "a"), open_cache(phantom / "b")
    assert a.manifest_hash != b.manifest_hash  # other source root, storage, time: the old address differed
    assert a.manifest[PIXELS_DIGEST] == b.manifest[PIXELS_DIGEST] == pixel_digest(a.path, "hdf5")
    assert a.content == b.content and a.fingerprint == b.fingerprint
    ea = json.loads((phantom / "eval-a" / "summary.json").read_text())
    eb = _evaluate(phantom / "b", phantom / "eval-b")
    assert ea["episode_list_hash"] == eb.episode_list_hash
    assert ea["cache_fingerprint"] == a.fingerprint and ea["cache_content"] == a.content
    result = compare(CompareConfig(inputs=(phantom / "eval-a", eb.output)))
    assert result.episode_list_hash == eb.episode_list_hash and len(result.rows) == 2
    rows = {r.name: r.mean for r in result.rows}
    assert len(set(rows.values())) == 1  # the same episodes and pixels: the same scores


def test_a_cache_with_one_pixel_changed_is_refused_naming_the_pixels(phantom):
    a, c = open_cache(phantom / "a"), open_cache(phantom / "c")
    assert a.content["pixels"] != c.content["pixels"]
    assert {k for k in a.content if a.content[k] != c.content[k]} == {"pixels"}
    ec = _evaluate(phantom / "c", phantom / "eval-c").output
    with pytest.raises(DataError, match=r"caches whose pixels differ") as err:
        compare(CompareConfig(inputs=(phantom / "eval-a", ec)))
    assert "labels" not in err.value.message and "splits" not in err.value.message


def _label_flipped(tmp_path):
    """Two caches of the same pixels whose indexes differ in one label value of one row; the first written
    without a pixel digest (as before digests were recorded)."""
    first = make_eval_cache(tmp_path, name="first")
    manifest = json.loads((first / MANIFEST).read_text())
    manifest.pop(PIXELS_DIGEST)
    (first / MANIFEST).write_text(json.dumps(manifest))
    index = pd.read_csv(first / INDEX, dtype={"image_id": str, "patient_id": str})
    values = index[list(LABELS)].to_numpy(dtype=np.float32)
    values[7, 0] = 1.0 - values[7, 0]  # class A: a meta-train class, so the meta-test episodes stay drawable
    with open_cache(first) as reader:
        images = reader.read(np.arange(len(reader)))
        manifest = {k: reader.manifest[k] for k in ("preprocessing",)}
    second = make_cache(
        tmp_path,
        index=make_index(len(index), LABELS, values=values),
        labels=LABELS,
        images=images,
        name="second",
        manifest=manifest,
    )
    shutil.copy(first / "meta_split.json", second / "meta_split.json")
    return first, second


def test_a_cache_with_one_label_changed_is_refused_naming_the_labels(tmp_path):
    first, second = _label_flipped(tmp_path)
    one, two = open_cache(first), open_cache(second)
    assert PIXELS_DIGEST not in one.manifest  # written without a digest: computed on first use
    assert one.content["pixels"] == pixel_digest(first, "hdf5") == two.content["pixels"]
    assert {k for k in one.content if one.content[k] != two.content[k]} == {"labels"}
    e1 = _evaluate(first, tmp_path / "e1", queries=2, shots=2)
    e2 = _evaluate(second, tmp_path / "e2", queries=2, shots=2)
    with pytest.raises(DataError, match=r"caches whose labels differ"):
        compare(CompareConfig(inputs=(e1.output, e2.output)))
    # an evaluation from before content fingerprints cannot be matched with a new one: re-evaluate
    path = e2.output / "summary.json"
    old = json.loads(path.read_text())
    for key in ("cache_content", "cache_fingerprint"):
        old.pop(key)
    path.write_text(json.dumps(old))
    with pytest.raises(DataError, match="before episodes were addressed by the cache's content") as err:
        compare(CompareConfig(inputs=(e1.output, e2.output)))
    assert "Re-evaluate" in err.value.hint


def test_the_digest_ignores_storage_and_covers_every_pixel(tmp_path):
    index = make_index(6, ("A",))
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    h5 = make_cache(tmp_path, index=index, labels=("A",), images=images, name="h5")
    npy = make_cache(tmp_path, index=index, labels=("A",), images=images, storage="memmap", name="npy")
    images[5, 7, 7] ^= 1
    other = make_cache(tmp_path, index=index, labels=("A",), images=images, name="other")
    assert pixel_digest(h5, "hdf5") == pixel_digest(npy, "memmap") != pixel_digest(other, "hdf5")
    assert json.loads((h5 / MANIFEST).read_text())["storage"] != json.loads((npy / MANIFEST).read_text())["storage"]
    assert open_cache(h5).fingerprint == open_cache(npy).fingerprint != open_cache(other).fingerprint
