"""The dataset plan: patients, follow-ups, findings per image, metadata and splits (no pixels yet).

The plan is made up front in the calling process from per-patient generators, so every image can then be
rendered independently (in any worker, in any order) and the output does not depend on ``workers``.

Label frequencies are shaped like NIH ChestX-ray14 (about half the images "No Finding", Infiltration and
Effusion the most common findings, Hernia rare), but tempered so that a few hundred patients still hold a few
examples of every finding. Findings co-occur the way they do in NIH (effusion with atelectasis, cardiomegaly
with effusion and edema, mass with nodule...). Chronic findings (cardiomegaly, emphysema, fibrosis, hernia,
nodules, masses, pleural thickening) mostly persist across a patient's follow-ups; acute ones often resolve.
Hernia (0.2% of NIH images) would be absent from small datasets if drawn like the others, so one patient in
every block of ``HERNIA_BLOCK`` has one from the first film on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_tools.data.labels import NIH_LABELS
from cxr_tools.data.synthetic.render import STREAM_PLAN, ImageSpec, rng_for

# Relative weight of each finding as the first finding of a new disease episode (NIH frequencies, tempered).
PRIMARY: dict[str, float] = {
    "Infiltration": 0.17,
    "Effusion": 0.13,
    "Atelectasis": 0.12,
    "Nodule": 0.08,
    "Mass": 0.075,
    "Pneumothorax": 0.07,
    "Consolidation": 0.06,
    "Pleural_Thickening": 0.055,
    "Cardiomegaly": 0.05,
    "Emphysema": 0.035,
    "Edema": 0.045,
    "Fibrosis": 0.025,
    "Pneumonia": 0.045,
    "Hernia": 0.003,  # plus one patient in every HERNIA_BLOCK, so small datasets have a few
}

# Finding -> findings that come with it, and how often (NIH's strongest co-occurrences).
CO_OCCUR: dict[str, tuple[tuple[str, float], ...]] = {
    "Effusion": (("Atelectasis", 0.25), ("Infiltration", 0.2), ("Cardiomegaly", 0.08), ("Consolidation", 0.08)),
    "Atelectasis": (("Effusion", 0.25), ("Infiltration", 0.2), ("Consolidation", 0.06)),
    "Infiltration": (("Effusion", 0.15), ("Atelectasis", 0.15), ("Pneumonia", 0.06), ("Nodule", 0.05)),
    "Mass": (("Nodule", 0.2), ("Effusion", 0.1)),
    "Nodule": (("Mass", 0.12), ("Infiltration", 0.1)),
    "Cardiomegaly": (("Effusion", 0.35), ("Edema", 0.1)),
    "Edema": (("Effusion", 0.3), ("Infiltration", 0.25), ("Cardiomegaly", 0.1)),
    "Consolidation": (("Effusion", 0.2), ("Atelectasis", 0.2), ("Infiltration", 0.15)),
    "Pneumonia": (("Infiltration", 0.35), ("Consolidation", 0.15), ("Effusion", 0.1)),
    "Pneumothorax": (("Emphysema", 0.12), ("Effusion", 0.1)),
    "Emphysema": (("Pneumothorax", 0.2), ("Infiltration", 0.08)),
    "Fibrosis": (("Pleural_Thickening", 0.2), ("Infiltration", 0.1)),
    "Pleural_Thickening": (("Effusion", 0.15), ("Fibrosis", 0.1), ("Atelectasis", 0.08)),
    "Hernia": (("Effusion", 0.08), ("Cardiomegaly", 0.05)),
}

PERSIST: dict[str, float] = {
    "Cardiomegaly": 0.9,
    "Emphysema": 0.92,
    "Fibrosis": 0.9,
    "Hernia": 0.85,
    "Pleural_Thickening": 0.85,
    "Nodule": 0.8,
    "Mass": 0.85,
}
ACUTE_PERSIST = 0.45
HERNIA_BLOCK = 60
SICK_VIEWS = {"Effusion", "Edema", "Pneumothorax", "Consolidation", "Pneumonia", "Atelectasis"}

# (view, original width, height, pixel spacing as written in the real CSV) of NIH's scanners.
NIH_SCANNERS: tuple[tuple[str, int, int, str], ...] = (
    ("AP", 2500, 2048, "0.168"),
    ("AP", 3056, 2544, "0.139"),
    ("PA", 2992, 2991, "0.14300000000000002"),
    ("PA", 2500, 2048, "0.168"),
    ("PA", 2048, 2500, "0.168"),
    ("PA", 2048, 2500, "0.171"),
    ("PA", 2021, 2021, "0.19431099999999998"),
)
_SCANNER_P = {"AP": (0.7, 0.3), "PA": (0.5, 0.2, 0.15, 0.05, 0.1)}


@dataclass(frozen=True)
class PlannedImage:
    """One image of the plan: how to render it and the metadata its CSV row needs."""

    spec: ImageSpec
    width: int  # original image size and pixel spacing (NIH CSV fields)
    height: int
    spacing: str
    devices: bool  # support devices drawn (CheXpert layout)


@dataclass(frozen=True)
class PatientPlan:
    """All images of one patient, in follow-up order."""

    patient: int
    images: tuple[PlannedImage, ...]


def _n_follow_ups(rng: np.random.Generator) -> int:
    """NIH-like: many patients have one film, some have long series."""
    if rng.random() < 0.45:
        return 1
    return int(min(12, 1 + rng.geometric(0.3)))


def _episode(rng: np.random.Generator) -> list[str]:
    names = list(PRIMARY)
    w = np.array([PRIMARY[n] for n in names])
    first = names[int(rng.choice(len(names), p=w / w.sum()))]
    found = {first}
    for other, p in CO_OCCUR.get(first, ()):
        if rng.random() < p:
            found.add(other)
    return [n for n in NIH_LABELS if n in found]  # a fixed order: set order varies with PYTHONHASHSEED


def sample_findings(rng: np.random.Generator, n: int, hernia: bool = False) -> list[dict[str, int]]:
    """Findings (name -> onset follow-up) of each of a patient's ``n`` films."""
    out: list[dict[str, int]] = []
    active: dict[str, int] = {}
    for j in range(n):
        active = {k: v for k, v in active.items() if rng.random() < PERSIST.get(k, ACUTE_PERSIST)}
        if hernia and j == 0:
            active["Hernia"] = 0
        if rng.random() < (0.36 if not active else 0.2):
            for name in _episode(rng):
                active.setdefault(name, j)
        out.append(dict(active))
    return out


def plan_patient(seed: int, patient: int, layout: str, ext: str) -> PatientPlan:
    """Plan one patient's films and their metadata."""
    rng = rng_for(seed, STREAM_PLAN, patient)
    n = _n_follow_ups(rng)
    sex = "M" if rng.random() < 0.56 else "F"
    age = int(np.clip(round(rng.normal(47.0, 17.0)), 1, 94))
    block = (patient - 1) // HERNIA_BLOCK
    hernia_patient = block * HERNIA_BLOCK + 1 + int(rng_for(seed, STREAM_PLAN, 0, block).integers(HERNIA_BLOCK))
    found = sample_findings(rng, n, hernia=patient == hernia_patient)
    images: list[PlannedImage] = []
    for j, fnd in enumerate(found):
        age += int(rng.random() < 0.3)
        ordered = tuple((name, fnd[name]) for name in NIH_LABELS if name in fnd)
        p_ap = (0.55 if layout == "nih" else 0.8) if SICK_VIEWS & set(fnd) else (0.3 if layout == "nih" else 0.65)
        view = "AP" if rng.random() < p_ap else "PA"
        choices = [s for s in NIH_SCANNERS if s[0] == view]
        _, width, height, spacing = choices[int(rng.choice(len(choices), p=_SCANNER_P[view]))]
        devices = layout == "chexpert" and rng.random() < (0.45 if view == "AP" else 0.1)
        lateral = layout == "chexpert" and rng.random() < 0.3
        if layout == "nih":
            rel = f"images/{patient:08d}_{j:03d}.{ext}"
        else:
            rel = f"patient{patient:05d}/study{j + 1}/view1_frontal.jpg"
        with_devices = ordered + ((("Support Devices", j),) if devices else ())
        spec = ImageSpec(patient, j, view, with_devices, rel, min(age, 99), sex)
        images.append(PlannedImage(spec, width, height, spacing, devices))
        if lateral:
            lat = ImageSpec(
                patient, j, "LL", ordered, f"patient{patient:05d}/study{j + 1}/view2_lateral.jpg", min(age, 99), sex
            )
            images.append(PlannedImage(lat, width, height, spacing, False))
    return PatientPlan(patient, tuple(images))


def split_patients(seed: int, n_patients: int, fraction: float) -> set[int]:
    """A seeded, patient-level hold-out set of about ``fraction`` of the patients (at least one if n >= 2)."""
    rng = rng_for(seed, STREAM_PLAN, 0)
    k = round(n_patients * fraction)
    k = min(max(k, 1), n_patients - 1) if n_patients >= 2 else 0
    return {int(p) + 1 for p in rng.permutation(n_patients)[:k]}


def findings_of(spec: ImageSpec) -> list[str]:
    """NIH findings of an image (support devices are not an NIH label)."""
    return [name for name, _ in spec.findings if name in NIH_LABELS]
