"""Per-patient anatomy of the chest X-ray phantom, drawn with vectorised OpenCV primitives.

Coordinates are normalised to the image side (``0..1``, x to the right, y down) so one anatomy renders at any
size. The image follows the radiological convention of a PA film: the patient's right lung is on the image
left, the heart bulges to the image right, the right hemidiaphragm sits higher than the left.

The image is built as a *density* map (higher = more attenuating = brighter on the film): soft tissue of the
body, air in the lungs, bone of ribs, clavicles and spine, the heart and mediastinum. A patient's anatomy
(body size, heart size and position, rib spacing, exposure, vessel pattern) is sampled once and shared by all
of that patient's follow-up images; only what changes between films (findings, pose, exposure jitter) is drawn
per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

AIR = 0.03  # density outside the body
SOFT = 0.62  # soft tissue of the thorax wall and abdomen
_SHIFT = 4  # fixed-point bits for sub-pixel cv2 drawing
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class PatientAnatomy:
    """The shape parameters of one patient (normalised units)."""

    cx: float  # body midline
    half_width: float  # half-width of the rib cage at the costophrenic angles
    apex_y: float  # top of the lungs
    cp_y: float  # costophrenic angles (right side; left is a little lower)
    dome_h: float  # height of the diaphragm domes above the costophrenic angle
    left_drop: float  # how much lower the left hemidiaphragm is
    mediastinum: float  # half-width of the upper mediastinum
    heart_x: float  # heart centre (image right of the midline)
    heart_y: float
    heart_rx: float  # heart semi-axes
    heart_ry: float
    heart_tilt: float  # degrees
    rib_spacing: float
    rib_width: float
    lung_air: float  # how much density air in the lungs removes
    bone: float  # bone density added by ribs/clavicles
    exposure: float  # patient's mean film brightness under automatic exposure control
    contrast: float  # patient's film contrast
    stomach: bool  # a normal gastric air bubble under the left dome


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient's anatomy."""
    u = rng.uniform
    half_width = u(0.33, 0.41)
    cp_y = u(0.66, 0.76)
    heart_ry = u(0.095, 0.12)
    return PatientAnatomy(
        cx=0.5 + u(-0.02, 0.02),
        half_width=half_width,
        apex_y=u(0.10, 0.16),
        cp_y=cp_y,
        dome_h=u(0.06, 0.10),
        left_drop=u(0.01, 0.035),
        mediastinum=u(0.045, 0.06),
        heart_x=u(0.045, 0.075),
        heart_y=cp_y - u(0.10, 0.13),
        heart_rx=half_width * u(0.38, 0.45),
        heart_ry=heart_ry,
        heart_tilt=u(-25.0, -10.0),
        rib_spacing=u(0.052, 0.068),
        rib_width=u(0.016, 0.024),
        lung_air=u(0.36, 0.46),
        bone=u(0.06, 0.10),
        exposure=u(0.40, 0.58),
        contrast=u(0.85, 1.15),
        stomach=bool(rng.random() < 0.65),
    )


def pts(xy: np.ndarray, size: int) -> np.ndarray:
    """Normalised ``(n, 2)`` points -> fixed-point int32 pixel coordinates for cv2 drawing with ``shift``."""
    return np.round(xy * size * _SCALE).astype(np.int32)


def fill_poly(size: int, polys: list[np.ndarray], value: int = 255) -> np.ndarray:
    """Anti-aliased filled polygons as a float32 mask in ``0..1``."""
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [pts(p, size) for p in polys], value, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) * (1.0 / 255.0)


def draw_ellipse(
    canvas: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    value: float,
    thickness: float = -1,
    arc: tuple[float, float] = (0.0, 360.0),
) -> None:
    """Draw a (filled or outlined) ellipse in normalised units onto ``canvas`` in place."""
    size = canvas.shape[0]
    c = (round(center[0] * size * _SCALE), round(center[1] * size * _SCALE))
    a = (max(1, round(axes[0] * size * _SCALE)), max(1, round(axes[1] * size * _SCALE)))
    t = -1 if thickness < 0 else max(1, round(thickness * size))
    cv2.ellipse(canvas, c, a, angle, arc[0], arc[1], value, t, cv2.LINE_AA, _SHIFT)


def smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; large sigmas are done at reduced resolution (same look, a fraction of the cost)."""
    if sigma_px < 0.3:
        return img
    size = img.shape[0]
    factor = 1
    while sigma_px / factor > 3.0 and size // (factor * 2) >= 16:
        factor *= 2
    if factor == 1:
        return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    small = cv2.resize(img, (size // factor, size // factor), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def lung_polygon(a: PatientAnatomy, side: int, cp_drop: float = 0.0, dome_scale: float = 1.0) -> np.ndarray:
    """Outline of one lung field: rounded apex, lateral wall, costophrenic angle, diaphragm dome.

    ``side`` is -1 for the patient's right lung (image left) and +1 for the left lung. ``cp_drop`` lowers
    the diaphragm (emphysema) or, negative, raises it (volume loss); ``dome_scale`` flattens the dome.
    """
    xm = a.cx + side * a.mediastinum
    w = a.half_width - a.mediastinum
    cp = a.cp_y + cp_drop + (a.left_drop if side > 0 else 0.0)
    height = cp - a.apex_y
    theta = np.linspace(0.0, math.pi / 2, 14)
    lateral = np.stack([xm + side * w * np.sin(theta) ** 0.8, cp - height * np.cos(theta)], 1)
    s = np.linspace(0.0, 1.0, 14)[1:]  # from the costophrenic angle (0) to the cardiophrenic angle (1)
    dome = a.dome_h * dome_scale
    dome_y = cp - dome * np.sin(np.pi * np.clip(s * 0.85 + 0.05, 0, 1)) ** 0.6 - 0.25 * dome * s
    dome_x = xm + side * w * (1.0 - s)
    base = np.stack([dome_x, dome_y], 1)
    medial = np.array([[xm - side * 0.005, a.apex_y + 0.45 * height], [xm, a.apex_y + 0.05]])
    return np.concatenate([lateral, base, medial]).astype(np.float64)


def body_polygon(a: PatientAnatomy) -> np.ndarray:
    """Silhouette of neck, shoulders and trunk."""
    hw = a.half_width + 0.07
    right = np.array(
        [
            [a.cx - 0.07, -0.02],
            [a.cx - 0.08, 0.05],
            [a.cx - hw - 0.05, 0.09],
            [a.cx - hw - 0.09, 0.16],
            [a.cx - hw - 0.04, 0.40],
            [a.cx - hw - 0.01, 0.70],
            [a.cx - hw + 0.02, 1.05],
        ]
    )
    left = right[::-1].copy()
    left[:, 0] = 2 * a.cx - left[:, 0]
    return np.concatenate([right, left])


@dataclass
class PatientLayers:
    """Pre-rendered layers of one patient at one size, reused by every follow-up image."""

    base: np.ndarray  # body soft tissue + ribs, clavicles, spine - trachea (float32 density)
    mediastinum: np.ndarray  # upper mediastinum, uint8 0/255 before smoothing (the heart is drawn onto a copy)
    markings: np.ndarray  # vessel pattern inside the lungs (float32, 0..1)
    texture: np.ndarray  # mottled parenchymal texture (float32, roughly -1..1)
    geometry: dict[tuple[float, ...], Geometry] = field(default_factory=dict)  # cache by Scene.shape_key()


@dataclass
class Geometry:
    """Lung and heart geometry of one shape (a patient's follow-ups mostly share it)."""

    polys: list[np.ndarray]  # lung outlines, right then left
    field: np.ndarray  # lung fields with heart and mediastinum excluded (float32 0..1)
    tissue: np.ndarray  # field * (vessel markings + texture): what a pneumothorax removes
    lung_term: np.ndarray  # density the lungs remove: field * air * taper - tissue


def render_layers(a: PatientAnatomy, size: int, rng: np.random.Generator) -> PatientLayers:
    """Draw the parts of the patient that do not change between follow-up images."""
    body = fill_poly(size, [body_polygon(a)])
    body = smooth(body, 0.012 * size) * (SOFT - AIR) + AIR
    return PatientLayers(
        base=body + _bones(a, size, rng) - 0.10 * trachea_mask(a, size),
        mediastinum=mediastinum_canvas(a, size),
        markings=_markings(a, size, rng),
        texture=_texture(size, rng),
    )


def geometry(a: PatientAnatomy, layers: PatientLayers, key: tuple[float, ...], magnification: float = 1.0) -> Geometry:
    """Lung fields, heart and the lungs' density for shape ``key`` (see ``Scene.shape_key``), cached."""
    full_key = (*key, magnification)
    geo = layers.geometry.get(full_key)
    if geo is not None:
        return geo
    cp_r, cp_l, dome_r, dome_l, heart_scale, air_scale, marking_scale = key
    size = layers.base.shape[0]
    polys = [lung_polygon(a, -1, cp_r, dome_r), lung_polygon(a, 1, cp_l, dome_l)]
    lungs = np.zeros((size, size), np.uint8)
    cv2.fillPoly(lungs, [pts(p, size) for p in polys], 255, cv2.LINE_AA, _SHIFT)
    opaque = layers.mediastinum.copy()
    draw_heart(opaque, a, heart_scale, magnification)
    lungs_f = smooth(lungs.astype(np.float32), 0.0025 * size)
    opaque_f = smooth(opaque.astype(np.float32), 0.006 * size)
    field_ = lungs_f * (255.0 - opaque_f) * (1.0 / 65025.0)
    taper = smooth(lungs_f, 0.05 * size) * (1.0 / 255.0)
    tissue = field_ * ((0.14 * marking_scale) * layers.markings + 0.025 * layers.texture)
    lung_term = field_ * ((0.45 * a.lung_air * air_scale) * (1.0 + taper)) - tissue
    geo = Geometry(polys, field_, tissue, lung_term)
    layers.geometry[full_key] = geo
    return geo


def _polylines(canvas: np.ndarray, curves: np.ndarray, value: int, thickness: int) -> None:
    """Draw ``(n, k, 2)`` normalised curves in one call.

    Plain 8-connected lines: every caller blurs the canvas afterwards, which anti-aliases them anyway at a
    fraction of the cost of ``LINE_AA`` for thick lines.
    """
    size = canvas.shape[0]
    cv2.polylines(canvas, list(pts(curves, size)), False, value, max(1, thickness), cv2.LINE_8, _SHIFT)


def _bones(a: PatientAnatomy, size: int, rng: np.random.Generator) -> np.ndarray:
    ribs = np.zeros((size, size), np.uint8)
    n_ribs = int((a.cp_y + 0.05 - a.apex_y) / a.rib_spacing) + 1
    side = np.repeat([-1.0, 1.0], n_ribs)[:, None]
    k = np.tile(np.arange(n_ribs, dtype=np.float64), 2)[:, None]
    y0 = a.apex_y - 0.02 + k * a.rib_spacing + rng.uniform(-0.004, 0.004, (2 * n_ribs, 1))
    reach = a.half_width - 0.01
    s = np.linspace(0.0, 1.0, 16)[None, :]
    x = a.cx + side * (0.025 + s * reach)
    y = y0 - 0.03 * np.sin(np.pi * s * 0.75) + (0.06 + 0.01 * k) * s**2.5
    th = round(a.rib_width * size)
    _polylines(ribs, np.stack([x, y], -1), 190, th)
    sa = s[:, :11]
    xa = a.cx + side * (reach + 0.02 - sa * reach * 0.7)
    ya = y0 + 0.05 + 0.006 * k + 0.09 * sa
    _polylines(ribs, np.stack([xa, ya], -1), 90, th - 1)
    # Clavicles: gently S-shaped bars from the sternal notch out to the shoulders.
    t = np.linspace(0.0, 1.0, 10)[None, :]
    cs = np.array([[-1.0], [1.0]])
    cl = np.stack(
        [
            a.cx + cs * (0.035 + t * (a.half_width - 0.02)),
            np.repeat(a.apex_y + 0.015 - 0.07 * t + 0.015 * np.sin(np.pi * t * 2), 2, 0),
        ],
        -1,
    )
    _polylines(ribs, cl, 255, round(0.028 * size))
    bones = cv2.GaussianBlur(ribs, (0, 0), max(0.3, 0.004 * size)).astype(np.float32) * (a.bone / 255.0)
    # Spine: a bright column with faint vertebral end plates, behind the mediastinum.
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    spine_col = np.exp(-(((xs - a.cx) / 0.028) ** 4)).astype(np.float32)
    plates = (0.8 + 0.2 * np.cos(2 * np.pi * xs / (a.rib_spacing * 0.9))).astype(np.float32)
    bones += 0.08 * np.outer(plates, spine_col)
    return bones


def _markings(a: PatientAnatomy, size: int, rng: np.random.Generator) -> np.ndarray:
    """Vessels branching out of both hila, thinning and fading towards the periphery."""
    canvas = np.zeros((size, size), np.uint8)
    n, steps = 18, 9
    side = np.repeat([-1.0, 1.0], n)[:, None]
    hx = a.cx + side * (a.mediastinum + 0.03)
    hy = a.apex_y + 0.45 * (a.cp_y - a.apex_y)
    ang = rng.uniform(-0.55 * math.pi, 0.55 * math.pi, (2 * n, 1))  # fan out laterally, up and down
    seg = rng.uniform(0.16, 0.30, (2 * n, 1)) / steps
    d = np.cumsum(rng.normal(0.0, 0.18, (2 * n, steps)), 1) + ang
    x = np.concatenate([hx, hx + side * np.cumsum(np.cos(d) * seg, 1)], 1)
    y = np.concatenate([np.full_like(hx, hy), hy + np.cumsum(np.sin(d) * seg, 1)], 1)
    curves = np.stack([x, y], -1)
    for j, (val, th) in enumerate(((230, 0.012), (170, 0.007), (110, 0.004))):  # thick at the hilum, fine outside
        _polylines(canvas, curves[:, j * 3 : j * 3 + 4], val, round(th * size))
    return cv2.GaussianBlur(canvas, (0, 0), max(0.3, 0.003 * size)).astype(np.float32) * (1.0 / 255.0)


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    low = max(8, size // 16)
    noise = rng.standard_normal((low, low)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * 0.6


def draw_heart(canvas: np.ndarray, a: PatientAnatomy, scale: float = 1.0, magnification: float = 1.0) -> None:
    """Heart and great vessels onto a uint8 canvas (``scale`` > 1 enlarges it: cardiomegaly)."""
    rx, ry = a.heart_rx * scale * magnification, a.heart_ry * (0.5 + 0.5 * scale) * magnification
    cx = a.cx + a.heart_x + (scale - 1.0) * 0.35 * a.heart_rx
    cy = a.heart_y - (ry - a.heart_ry) * 0.3
    draw_ellipse(canvas, (cx, cy), (rx, ry), a.heart_tilt, 255)
    # right heart border and aortic knob / great vessels above it
    draw_ellipse(canvas, (a.cx - 0.02 * scale, cy + 0.01), (rx * 0.45, ry * 0.8), 0, 255)
    draw_ellipse(canvas, (a.cx + 0.035, a.apex_y + 0.16), (0.035, 0.03), 0, 255)
    # the heart rests on the diaphragm: fill down to the cardiophrenic angles
    draw_ellipse(canvas, (cx - 0.2 * rx, a.cp_y + a.left_drop * 0.5 - 0.02), (rx * 1.05, 0.06), 0, 255)


def mediastinum_canvas(a: PatientAnatomy, size: int) -> np.ndarray:
    """Upper mediastinum column as a uint8 canvas (0/255)."""
    poly = np.array(
        [
            [a.cx - a.mediastinum, -0.02],
            [a.cx + a.mediastinum, -0.02],
            [a.cx + a.mediastinum, a.heart_y],
            [a.cx - a.mediastinum, a.heart_y],
        ]
    )
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [pts(poly, size)], 255, cv2.LINE_AA, _SHIFT)
    return canvas


def trachea_mask(a: PatientAnatomy, size: int) -> np.ndarray:
    """Air column of the trachea down to the carina."""
    canvas = np.zeros((size, size), np.uint8)
    carina = a.apex_y + 0.22
    top = np.array([[a.cx, 0.0], [a.cx, carina]])
    cv2.polylines(canvas, [pts(top, size)], False, 255, max(1, round(0.028 * size)), cv2.LINE_AA, _SHIFT)
    bronchi = [
        np.array([[a.cx, carina], [a.cx - 0.05, carina + 0.045]]),
        np.array([[a.cx, carina], [a.cx + 0.06, carina + 0.05]]),
    ]
    cv2.polylines(canvas, [pts(b, size) for b in bronchi], False, 200, max(1, round(0.016 * size)), cv2.LINE_AA, _SHIFT)
    return smooth(canvas.astype(np.float32) * (1.0 / 255.0), 0.005 * size)
