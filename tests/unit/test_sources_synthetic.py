"""The synthetic phantom generator's output is recognised and read by the NIH / CheXpert readers."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_tools.data.decoding.imaging import ImageOps, load_image
from cxr_tools.data.sources import detect_source, load_source
from cxr_tools.data.synthetic import SyntheticConfig, generate


@pytest.mark.parametrize(("layout", "fmt"), [("nih", "png"), ("chexpert", "png"), ("nih", "dicom")])
def test_generated_dataset_is_detected_read_and_decodable(tmp_path, layout, fmt):
    dest = tmp_path / f"{layout}-{fmt}"
    result = generate(SyntheticConfig(dest=dest, patients=6, size=32, layout=layout, format=fmt))
    assert detect_source(dest) == "synthetic"
    src = load_source(dest, views="all")
    assert src.kind == "synthetic" and len(src) == result.n_images and not src.problems
    assert src.metadata_sha256 is not None and len(src.labels) == 14
    assert src.table["patient_id"].nunique() == result.n_patients
    imgs = np.stack([load_image(p, ImageOps(size=32)) for p in src.table["source_path"]])
    assert imgs.shape == (len(src), 32, 32) and imgs.std() > 5
