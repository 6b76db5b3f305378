"""Render and write the images of a few patients (runs in the calling process or in a worker process)."""

from __future__ import annotations

from pathlib import Path

from cxr_tools.data.synthetic.anatomy import render_layers, sample_anatomy
from cxr_tools.data.synthetic.plan import PatientPlan
from cxr_tools.data.synthetic.render import STREAM_ANATOMY, render_image, rng_for
from cxr_tools.data.synthetic.writers import DICOM_VARIANTS, encode_dicom, encode_jpeg, encode_png


def dicom_variant(patient: int, follow_up: int) -> int:
    """Which DICOM variant an image gets: cycles so any four consecutive patients cover all of them."""
    return (patient + follow_up) % len(DICOM_VARIANTS)


def render_patients(seed: int, size: int, fmt: str, layout: str, root: str, plans: list[PatientPlan]) -> int:
    """Render every image of ``plans`` under ``root``; returns the number of images written."""
    n = 0
    made: set[Path] = set()
    for plan in plans:
        anatomy = sample_anatomy(rng_for(seed, STREAM_ANATOMY, plan.patient))
        layers = render_layers(anatomy, size, rng_for(seed, STREAM_ANATOMY, plan.patient, 1))
        for item in plan.images:
            img = render_image(seed, item.spec, anatomy, layers)
            if fmt == "dicom":
                data = encode_dicom(img, item, seed, dicom_variant(plan.patient, item.spec.follow_up))
            elif layout == "chexpert":
                data = encode_jpeg(img)
            else:
                data = encode_png(img)
            path = Path(root) / item.spec.relpath
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(data)
            n += 1
    return n
