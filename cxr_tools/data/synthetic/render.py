"""Compose one phantom film: anatomy + findings -> density -> pose -> exposure -> noise -> uint8.

Exposure follows an automatic exposure control: each film's mean brightness is set to a target drawn per
patient and per image, independently of its findings. Real AEC does the same (it stops the exposure at a fixed
detector dose), and it is what keeps the findings from being separable by global brightness alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cxr_tools.data.synthetic.anatomy import AIR, SOFT, PatientAnatomy, PatientLayers, draw_ellipse, geometry, smooth
from cxr_tools.data.synthetic.findings import FINDINGS, Params, Scene, blob

# Independent random streams, so adding a draw to one never shifts another.
STREAM_PLAN, STREAM_ANATOMY, STREAM_FINDING, STREAM_IMAGE = 1, 2, 3, 4


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one purpose, derived from the dataset seed and integer keys (patient, follow-up...)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render and write one image, independent of any other image."""

    patient: int  # 1-based patient number
    follow_up: int  # 0-based follow-up (NIH) / study index - 1 (CheXpert)
    view: str  # PA, AP or LL (lateral)
    findings: tuple[tuple[str, int], ...]  # (finding, follow-up at which it appeared)
    relpath: str  # where the file goes, relative to the dataset root
    age: int
    sex: str  # M or F


def finding_params(
    seed: int, patient: int, findings: tuple[tuple[str, int], ...], a: PatientAnatomy
) -> list[tuple[str, Params]]:
    """Geometry of each finding, fixed per (patient, finding, onset) so persisting findings stay in place."""
    names = list(FINDINGS)
    out = []
    for name, onset in findings:
        sampler = FINDINGS[name][0]
        out.append((name, sampler(rng_for(seed, STREAM_FINDING, patient, names.index(name), onset), a)))
    return out


def render_frontal(
    a: PatientAnatomy, layers: PatientLayers, findings: list[tuple[str, Params]], rng: np.random.Generator, view: str
) -> np.ndarray:
    """Render a PA/AP film as float32 density (before pose and exposure)."""
    size = layers.base.shape[0]
    scene = Scene(size)
    for name, p in findings:
        shaper = FINDINGS[name][1]
        if shaper is not None:
            shaper(scene, p)
    geo = geometry(a, layers, scene.shape_key(), 1.07 if view == "AP" else 1.0)  # AP films magnify the heart
    density = layers.base - geo.lung_term
    scene.field_mask, scene.polys, scene.texture, scene.lung_term = geo.field, geo.polys, layers.texture, geo.lung_term
    scene.midline = int(a.cx * size)
    if a.stomach:  # the normal gastric bubble under the left hemidiaphragm
        y = a.cp_y + a.left_drop + scene.cp_drop[1] + 0.02 - a.dome_h * scene.dome_scale[1] * 0.5
        blob(density, a.cx + a.half_width * 0.45, y, 0.05, 0.03, -0.12, 4.0)
    for name, p in findings:
        painter = FINDINGS[name][2]
        if painter is not None:
            painter(scene, a, p)
    add, air, no_mark = scene.painted("add"), scene.painted("air"), scene.painted("no_mark")
    if add is not None:
        density += add
    if air is not None:
        density -= air
    if no_mark is not None:  # markings and texture are absent where there is no lung tissue
        density -= geo.tissue * np.minimum(no_mark, 1.0)
    return density


def render_lateral(
    a: PatientAnatomy, size: int, findings: list[tuple[str, Params]], rng: np.random.Generator
) -> np.ndarray:
    """A simple lateral film (patient facing image left): sternum, one lung field, heart, spine, diaphragm."""
    canvas = np.zeros((size, size), np.uint8)
    draw_ellipse(canvas, (0.5, 0.55), (0.40, 0.62), 0, 255)
    body = smooth(canvas.astype(np.float32) / 255.0, 0.012 * size) * (SOFT - AIR) + AIR
    lung = np.zeros((size, size), np.uint8)
    draw_ellipse(lung, (0.52, a.cp_y - 0.25), (0.27, a.cp_y - a.apex_y - 0.05), 0, 255)
    lung_m = lung.astype(np.float32) / 255.0
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    names = [n for n, _ in findings]
    drop = 0.04 if "Emphysema" in names else 0.0
    dome = a.cp_y + drop - 0.08 * np.exp(-(((xs - 0.5) / 0.25) ** 2)) * (0.4 if drop else 1.0)
    lung_m *= np.clip((dome[None, :] - ys[:, None]) / 0.008, 0.0, 1.0)
    heart = np.zeros((size, size), np.uint8)
    hs = next((p["scale"] for n, p in findings if n == "Cardiomegaly"), 1.0)
    draw_ellipse(heart, (0.36, a.heart_y), (0.13 * hs, 0.11 * (0.5 + 0.5 * hs)), -30, 255)
    heart_m = smooth(heart.astype(np.float32) / 255.0, 0.006 * size)
    field = smooth(lung_m, 0.004 * size) * (1.0 - heart_m)
    add = np.zeros((size, size), np.float32)
    if "Effusion" in names:  # posterior costophrenic sulcus fills first
        add += 0.3 * np.clip((ys[:, None] - (a.cp_y - 0.07)) / 0.01, 0, 1) * np.clip((xs[None, :] - 0.55) / 0.05, 0, 1)
    for name, _ in findings:
        if name in {"Mass", "Nodule", "Consolidation", "Pneumonia", "Atelectasis", "Infiltration"}:
            r = 0.02 if name == "Nodule" else 0.05
            blob(add, rng.uniform(0.35, 0.7), rng.uniform(a.apex_y + 0.1, a.cp_y - 0.1), r, r, 0.18, 3.0)
    spine = np.zeros((size, size), np.uint8)
    cv2.line(spine, (int(0.8 * size), 0), (int(0.82 * size), size), 255, max(1, round(0.07 * size)))
    sternum = np.zeros((size, size), np.uint8)
    cv2.line(
        sternum,
        (int(0.17 * size), int(0.15 * size)),
        (int(0.2 * size), int(0.65 * size)),
        255,
        max(1, round(0.02 * size)),
    )
    bones = smooth((spine.astype(np.float32) * 0.14 + sternum.astype(np.float32) * 0.08) / 255.0, 0.004 * size)
    return body - a.lung_air * 0.8 * field + bones + add * field


def expose(density: np.ndarray, a: PatientAnatomy, rng: np.random.Generator) -> np.ndarray:
    """Pose (slight rotation, shift, zoom), automatic exposure, heel effect and quantum noise -> uint8."""
    size = density.shape[0]
    angle = float(np.clip(rng.normal(0.0, 1.5), -4.0, 4.0))
    zoom = rng.uniform(0.97, 1.03)
    m = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, zoom)
    m[:, 2] += rng.uniform(-0.02, 0.02, 2) * size
    density = cv2.warpAffine(
        density, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=AIR
    )
    gain = 1.3 * a.contrast * rng.uniform(0.9, 1.1)
    target = a.exposure + rng.normal(0.0, 0.035)
    img = (density - float(density.mean())) * gain + target
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    img += (rng.normal(0.0, 0.04) * ys)[:, None]  # anode heel effect
    # quantum noise; uniform noise of the same variance looks the same after quantisation and is 4x cheaper
    sigma = rng.uniform(0.006, 0.018) * math.sqrt(12.0) * 255.0
    img *= 255.0
    img += (rng.random((size, size), dtype=np.float32) - np.float32(0.5)) * np.float32(sigma) + np.float32(0.5)
    return np.clip(img, 0.0, 255.0, out=img).astype(np.uint8)


def render_image(seed: int, spec: ImageSpec, a: PatientAnatomy, layers: PatientLayers) -> np.ndarray:
    """Render one image (uint8, size x size) from its spec; the same inputs always give the same pixels."""
    view_key = 1 if spec.view == "LL" else 0
    rng = rng_for(seed, STREAM_IMAGE, spec.patient, spec.follow_up, view_key)
    findings = finding_params(seed, spec.patient, spec.findings, a)
    if spec.view == "LL":
        density = render_lateral(a, layers.base.shape[0], findings, rng)
    else:
        density = render_frontal(a, layers, findings, rng, spec.view)
    return expose(density, a, rng)
