"""Localised signatures of the 14 NIH findings (and CheXpert's support devices) on the phantom.

Each finding has a *sampler* that draws its geometry (side, position, size, intensity) from a generator keyed
on the patient and the follow-up at which the finding appeared, so a nodule that persists across follow-ups
stays where it was; and a *painter* that draws it into the image's :class:`Scene`. Findings that change the
anatomy itself (cardiomegaly, emphysema, atelectatic volume loss) act through the scene's shape fields, which
are applied before the lungs are drawn; the rest paint density (opacities), lucency (air) or remove lung
markings once the lung masks exist. Ranges of size and intensity are wide and overlap with normal variation
so that the tasks are learnable but not trivial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from cxr_tools.data.synthetic.anatomy import PatientAnatomy, draw_ellipse, fill_poly, pts, smooth

Params = dict[str, Any]


@dataclass
class Scene:
    """What the findings of one image do to it; filled in two passes (shape, then paint).

    The paint arrays (``add``, ``air``, ``no_mark``) are allocated on first use, so an image without
    findings costs nothing here.
    """

    size: int
    heart_scale: float = 1.0
    cp_drop: list[float] = field(default_factory=lambda: [0.0, 0.0])  # right, left
    dome_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    air_scale: float = 1.0  # >1: hyperlucent lungs
    marking_scale: float = 1.0
    # Painted after the lungs exist:
    field_mask: np.ndarray | None = None  # both lung fields, heart and mediastinum excluded
    polys: list[np.ndarray] = field(default_factory=list)  # [right, left] lung outlines
    texture: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))
    lung_term: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))  # density the lungs remove
    midline: int = 0  # pixel column between the lungs
    _arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def shape_key(self) -> tuple[float, ...]:
        """Everything the shape pass changed; images with the same key share lung and heart geometry."""
        return (*self.cp_drop, *self.dome_scale, self.heart_scale, self.air_scale, self.marking_scale)

    def _get(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = np.zeros((self.size, self.size), np.float32)
        return arr

    def painted(self, name: str) -> np.ndarray | None:
        """The array ``name`` if any painter touched it."""
        return self._arrays.get(name)

    @property
    def add(self) -> np.ndarray:
        """Density added (opacities)."""
        return self._get("add")

    @add.setter
    def add(self, value: np.ndarray) -> None:
        self._arrays["add"] = value

    @property
    def air(self) -> np.ndarray:
        """Density removed (gas)."""
        return self._get("air")

    @air.setter
    def air(self, value: np.ndarray) -> None:
        self._arrays["air"] = value

    @property
    def no_mark(self) -> np.ndarray:
        """Where lung markings are absent (pneumothorax, bullae)."""
        return self._get("no_mark")

    @no_mark.setter
    def no_mark(self, value: np.ndarray) -> None:
        self._arrays["no_mark"] = value

    def lung(self, i: int) -> np.ndarray:
        """Lung field of one side (0 = patient's right = image left), zero elsewhere."""
        key = f"lung{i}"
        arr = self._arrays.get(key)
        if arr is None:
            assert self.field_mask is not None, "lung() is available in the paint pass"
            arr = np.zeros_like(self.field_mask)
            cols = slice(0, self.midline) if i == 0 else slice(self.midline, self.size)
            arr[:, cols] = self.field_mask[:, cols]
            self._arrays[key] = arr
        return arr

    def both_lungs(self) -> np.ndarray:
        assert self.field_mask is not None, "both_lungs() is available in the paint pass"
        return self.field_mask


def side_index(side: int) -> int:
    return 0 if side < 0 else 1


def lung_point(a: PatientAnatomy, side: int, u: float, v: float) -> tuple[float, float]:
    """A point inside a lung: ``u`` 0 medial .. 1 lateral wall, ``v`` 0 apex .. 1 costophrenic angle."""
    w = a.half_width - a.mediastinum
    height = a.cp_y - a.apex_y
    extent = w * (1.0 - (1.0 - v) ** 2) ** 0.4
    return a.cx + side * (a.mediastinum + u * extent), a.apex_y + v * height


def _box(size: int, x: float, y: float, r: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel slices of a square around (x, y) of half-side r, and its normalised coordinates."""
    x0, x1 = max(0, int((x - r) * size)), min(size, math.ceil((x + r) * size) + 1)
    y0, y1 = max(0, int((y - r) * size)), min(size, math.ceil((y + r) * size) + 1)
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / size
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size
    return slice(y0, y1), slice(x0, x1), xs[None, :], ys[:, None]


def blob(
    canvas: np.ndarray, x: float, y: float, rx: float, ry: float, amp: float, power: float = 2.0, angle: float = 0.0
) -> None:
    """Add a (super-)Gaussian blob: ``power`` 2 is hazy, 4-8 gives an increasingly well-defined edge."""
    size = canvas.shape[0]
    sy, sx, xs, ys = _box(size, x, y, 2.6 * max(rx, ry))
    if sy.stop <= sy.start or sx.stop <= sx.start:
        return
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    dx, dy = xs - x, ys - y
    d2 = ((dx * c + dy * s) / rx) ** 2 + ((-dx * s + dy * c) / ry) ** 2
    canvas[sy, sx] += amp * np.exp(-(d2 ** (power / 2.0)))


# --- samplers and painters ------------------------------------------------------------------------------


def _side(rng: np.random.Generator, p_right: float = 0.5) -> int:
    return -1 if rng.random() < p_right else 1


def s_atelectasis(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    side = _side(rng, 0.55)
    bands = [
        (
            *lung_point(a, side, rng.uniform(0.25, 0.8), rng.uniform(0.62, 0.88)),
            rng.uniform(0.05, 0.11),
            rng.uniform(0.008, 0.018),
            rng.uniform(-25, 25),
        )
        for _ in range(int(rng.integers(1, 3)))
    ]
    return {
        "side": side,
        "bands": bands,
        "amp": rng.uniform(0.16, 0.30),
        "lift": rng.uniform(0.012, 0.035),
        "haze": rng.uniform(0.03, 0.08),
    }


def shape_atelectasis(scene: Scene, p: Params) -> None:
    scene.cp_drop[side_index(p["side"])] -= p["lift"]  # volume loss lifts the hemidiaphragm


def paint_atelectasis(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    tmp = np.zeros_like(scene.add)
    for x, y, length, thick, ang in p["bands"]:
        blob(tmp, x, y, length, thick, p["amp"], 4.0, ang)
    x, y = lung_point(a, p["side"], 0.5, 0.85)
    blob(tmp, x, y, 0.09, 0.06, p["haze"], 2.0)
    scene.add += tmp * scene.lung(side_index(p["side"]))


def s_cardiomegaly(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    return {"scale": rng.uniform(1.15, 1.4)}


def shape_cardiomegaly(scene: Scene, p: Params) -> None:
    scene.heart_scale *= p["scale"]


def s_effusion(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    r = rng.random()
    sides = [-1] if r < 0.45 else ([1] if r < 0.8 else [-1, 1])
    return {"sides": sides, "level": [rng.uniform(0.04, 0.16) for _ in sides], "amp": rng.uniform(0.55, 0.95)}


def paint_effusion(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Dependent fluid: fills the costophrenic angle, its surface a meniscus climbing the lateral wall."""
    size = scene.size
    w = a.half_width - a.mediastinum
    for side, h in zip(p["sides"], p["level"], strict=True):
        i = side_index(side)
        cp = a.cp_y + scene.cp_drop[i] + (a.left_drop if side > 0 else 0.0)
        xm = a.cx + side * a.mediastinum
        y0, y1 = max(0, int((cp - h - 0.03) * size)), min(size, int((cp + 0.02) * size) + 1)
        x0, x1 = (xm, xm + side * (w + 0.02)) if side > 0 else (xm - w - 0.02, xm)
        sx = slice(max(0, int(x0 * size)), min(size, int(x1 * size) + 1))
        xs = (np.arange(sx.start, sx.stop, dtype=np.float32) + 0.5) / size
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / size
        lat = np.clip(np.abs(xs - xm) / w, 0.0, 1.0)[None, :]
        surface = cp - h * (0.55 + 0.45 * lat**2)  # higher laterally: the meniscus
        fluid = np.clip((ys[:, None] - surface) / 0.012 + 0.5, 0.0, 1.0)
        sy = slice(y0, y1)
        # fluid is about as dense as soft tissue: it cancels most of the lung's air (and its markings)
        scene.add[sy, sx] += p["amp"] * fluid * scene.lung_term[sy, sx]


def s_infiltration(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    side = _side(rng)
    v0 = rng.uniform(0.3, 0.75)
    spots = [
        (
            *lung_point(
                a,
                side if rng.random() < 0.8 else -side,
                rng.uniform(0.15, 0.85),
                np.clip(v0 + rng.normal(0, 0.12), 0.15, 0.9),
            ),
            rng.uniform(0.025, 0.05),
        )
        for _ in range(int(rng.integers(3, 7)))
    ]
    return {"spots": spots, "amp": rng.uniform(0.08, 0.15)}


def paint_infiltration(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    tmp = np.zeros_like(scene.add)
    for x, y, r in p["spots"]:
        blob(tmp, x, y, r, r * 0.8, p["amp"], 2.0)
    patchy = np.clip(0.75 + 0.6 * scene.texture, 0.2, 1.6)
    scene.add += tmp * patchy * scene.both_lungs()


def _lesion_params(rng: np.random.Generator, a: PatientAnatomy, rlo: float, rhi: float, n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        side = _side(rng)
        x, y = lung_point(a, side, rng.uniform(0.2, 0.8), rng.uniform(0.18, 0.8))
        out.append((x, y, rng.uniform(rlo, rhi), rng.uniform(0.8, 1.2), rng.uniform(0, 180), side))
    return out


def s_nodule(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    n = 1 if rng.random() < 0.8 else int(rng.integers(2, 4))
    return {
        "lesions": _lesion_params(rng, a, 0.016, 0.03, n),
        "amp": rng.uniform(0.2, 0.35),
        "power": rng.uniform(4, 8),
    }


def paint_nodule(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    for x, y, r, ecc, ang, _ in p["lesions"]:
        blob(scene.add, x, y, r, r * ecc, p["amp"], p["power"], ang)


def s_mass(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    (les,) = _lesion_params(rng, a, 0.045, 0.075, 1)
    lobes = [
        (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.45, 0.7)) for _ in range(int(rng.integers(1, 4)))
    ]
    return {"lesion": les, "lobes": lobes, "amp": rng.uniform(0.5, 0.85)}


def paint_mass(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    x, y, r, ecc, ang, _side = p["lesion"]
    tmp = np.zeros_like(scene.add)
    blob(tmp, x, y, r, r * ecc, 1.0, 4.0, ang)
    for dx, dy, f in p["lobes"]:
        blob(tmp, x + dx * r, y + dy * r, r * f, r * f, 1.0, 4.0)
    # soft-tissue density: replaces a fraction of the lung's air, never brighter than the chest wall
    scene.add += p["amp"] * np.minimum(tmp, 1.0) * (np.maximum(scene.lung_term, 0.0) + 0.03)


def s_pneumonia(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    side = _side(rng, 0.55)
    cx, cy = lung_point(a, side, rng.uniform(0.3, 0.7), rng.uniform(0.45, 0.8))
    spots = [
        (cx + rng.normal(0, 0.035), cy + rng.normal(0, 0.035), rng.uniform(0.025, 0.05))
        for _ in range(int(rng.integers(4, 8)))
    ]
    bronchi = [(cx + rng.normal(0, 0.02), cy + rng.normal(0, 0.02), rng.uniform(0, 2 * math.pi)) for _ in range(3)]
    return {"side": side, "spots": spots, "bronchi": bronchi, "amp": rng.uniform(0.4, 0.65)}


def paint_pneumonia(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Dense patchy confluent opacity with air bronchograms."""
    tmp = np.zeros_like(scene.add)
    for x, y, r in p["spots"]:
        blob(tmp, x, y, r, r, 1.0, 2.5)
    tmp = np.minimum(tmp, 1.2) * np.clip(0.85 + 0.5 * scene.texture, 0.4, 1.4)
    lines = np.zeros((scene.size, scene.size), np.uint8)
    segs = [np.array([[x, y], [x + 0.05 * math.cos(t), y + 0.05 * math.sin(t)]]) for x, y, t in p["bronchi"]]
    cv2.polylines(
        lines, [pts(s, scene.size) for s in segs], False, 255, max(1, round(0.006 * scene.size)), cv2.LINE_AA, 4
    )
    tmp *= 1.0 - 0.5 * lines.astype(np.float32) / 255.0
    scene.add += p["amp"] * tmp * np.maximum(scene.lung_term, 0.0) * (scene.lung(side_index(p["side"])) > 0)


def s_consolidation(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    side = _side(rng, 0.55)
    upper = rng.random() < 0.35
    x, y = lung_point(a, side, rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.35) if upper else rng.uniform(0.55, 0.75))
    return {
        "side": side,
        "x": x,
        "y": y,
        "rx": rng.uniform(0.06, 0.1),
        "ry": rng.uniform(0.05, 0.08),
        "fissure": y + (1 if upper else -1) * rng.uniform(0.02, 0.05),
        "upper": upper,
        "amp": rng.uniform(0.6, 0.9),
    }


def paint_consolidation(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Homogeneous lobar opacity with one sharp border against a fissure."""
    tmp = np.zeros_like(scene.add)
    blob(tmp, p["x"], p["y"], p["rx"], p["ry"], 1.0, 4.0)
    ys = (np.arange(scene.size, dtype=np.float32) + 0.5) / scene.size
    edge = np.clip((ys - p["fissure"]) / 0.006, -0.5, 0.5) + 0.5
    cut = (1.0 - edge) if p["upper"] else edge
    lung = np.maximum(scene.lung_term, 0.0) * (scene.lung(side_index(p["side"])) > 0)
    scene.add += p["amp"] * np.minimum(tmp, 1.0) * cut[:, None] * lung


def s_pneumothorax(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    return {
        "side": _side(rng),
        "shrink": rng.uniform(0.72, 0.88),
        "lucency": rng.uniform(0.04, 0.09),
        "reach": rng.uniform(0.55, 0.85),
    }


def paint_pneumothorax(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Air between chest wall and a visible visceral pleural line; no lung markings in the rim."""
    i = side_index(p["side"])
    poly = scene.polys[i]
    hilum = np.array([a.cx + p["side"] * (a.mediastinum + 0.02), a.apex_y + 0.6 * (a.cp_y - a.apex_y)])
    collapsed = hilum + (poly - hilum) * p["shrink"]
    inner = fill_poly(scene.size, [collapsed])
    ys = (np.arange(scene.size, dtype=np.float32) + 0.5) / scene.size
    limit = a.apex_y + p["reach"] * (a.cp_y - a.apex_y)
    upper = np.clip((limit - ys) / 0.04, 0.0, 1.0)[:, None]
    rim = scene.lung(i) * (1.0 - inner) * upper
    scene.no_mark += rim
    scene.air += p["lucency"] * rim
    scene.add += 0.03 * inner * scene.lung(i)  # the collapsed lung is a little denser
    line = np.zeros((scene.size, scene.size), np.uint8)
    cv2.polylines(line, [pts(collapsed, scene.size)], True, 255, 1, cv2.LINE_AA, 4)
    scene.add += 0.12 * (line.astype(np.float32) / 255.0) * upper * scene.lung(i)


def s_edema(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    kerley = [
        (side, rng.uniform(0.8, 0.95), rng.uniform(0.72, 0.95))
        for side in (-1, 1)
        for _ in range(int(rng.integers(2, 6)))
    ]
    return {
        "amp": rng.uniform(0.05, 0.12),
        "rx": rng.uniform(0.08, 0.12),
        "ry": rng.uniform(0.10, 0.15),
        "kerley": kerley,
    }


def paint_edema(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Bilateral perihilar ('bat-wing') haze and Kerley B lines at the lung bases."""
    tmp = np.zeros_like(scene.add)
    for side in (-1, 1):
        x, y = lung_point(a, side, 0.3, 0.5)
        blob(tmp, x, y, p["rx"], p["ry"], p["amp"], 2.0)
    lines = np.zeros((scene.size, scene.size), np.uint8)
    segs = []
    for side, u, v in p["kerley"]:
        x, y = lung_point(a, side, u, v)
        segs.append(np.array([[x, y], [x - side * 0.03, y]]))
    cv2.polylines(lines, [pts(s, scene.size) for s in segs], False, 255, 1, cv2.LINE_AA, 4)
    tmp += 0.09 * lines.astype(np.float32) / 255.0
    scene.add += tmp * scene.both_lungs()


def s_emphysema(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    bulla = rng.random() < 0.5
    bx, by = lung_point(a, _side(rng), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3))
    return {
        "drop": rng.uniform(0.015, 0.05),
        "flat": rng.uniform(0.3, 0.7),
        "air": rng.uniform(1.05, 1.2),
        "bulla": bulla,
        "bx": bx,
        "by": by,
        "br": rng.uniform(0.03, 0.05),
    }


def shape_emphysema(scene: Scene, p: Params) -> None:
    scene.cp_drop = [d + p["drop"] for d in scene.cp_drop]
    scene.dome_scale = [s * p["flat"] for s in scene.dome_scale]
    scene.air_scale *= p["air"]
    scene.marking_scale *= 0.55
    scene.heart_scale *= 0.92  # long, narrow 'tubular' heart


def paint_emphysema(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    if p["bulla"]:
        tmp = np.zeros_like(scene.air)
        blob(tmp, p["bx"], p["by"], p["br"], p["br"], 1.0, 6.0)
        lungs = scene.both_lungs()
        scene.air += 0.05 * tmp * lungs
        scene.no_mark += tmp * lungs


def s_fibrosis(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    return {
        "seed": int(rng.integers(0, 2**31)),
        "amp": rng.uniform(0.12, 0.2),
        "basal": rng.random() < 0.7,
        "lift": rng.uniform(0.0, 0.02),
    }


def shape_fibrosis(scene: Scene, p: Params) -> None:
    scene.cp_drop = [d - p["lift"] for d in scene.cp_drop]


def paint_fibrosis(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Reticular (net-like) pattern of fine lines, basal-peripheral or upper-zone."""
    size = scene.size
    rng = np.random.default_rng(p["seed"])
    cells = max(8, size // 6)
    noise = cv2.resize(
        rng.standard_normal((cells, cells)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    net = np.clip(1.0 - np.abs(noise) / 0.25, 0.0, 1.0)  # zero-crossings of the noise form a network
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size
    v = (ys - a.apex_y) / (a.cp_y - a.apex_y)
    zone = np.clip((v - 0.45) / 0.25, 0, 1) if p["basal"] else np.clip((0.5 - v) / 0.25, 0, 1)
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    periphery = np.clip((np.abs(xs - a.cx) - a.mediastinum - 0.06) / 0.12, 0.0, 1.0)
    scene.add += p["amp"] * net * zone[:, None] * periphery[None, :] * scene.both_lungs()


def s_pleural_thickening(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    apical = rng.random() < 0.35
    return {
        "side": _side(rng),
        "apical": apical,
        "t0": rng.uniform(0.05, 0.4),
        "span": rng.uniform(0.25, 0.5),
        "thick": rng.uniform(0.014, 0.028),
        "amp": rng.uniform(0.22, 0.36),
    }


def paint_pleural_thickening(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """A smooth band of pleural density along the lateral chest wall or over the apex (apical cap)."""
    i = side_index(p["side"])
    lateral = scene.polys[i][:14]  # the lateral outline, apex -> costophrenic angle
    n = len(lateral)
    lo = 0 if p["apical"] else int(p["t0"] * n)
    hi = max(lo + 3, int(lo + p["span"] * n)) if not p["apical"] else 5
    band = np.zeros((scene.size, scene.size), np.uint8)
    th = max(2, round(2 * p["thick"] * scene.size))
    cv2.polylines(band, [pts(lateral[lo:hi], scene.size)], False, 255, th, cv2.LINE_AA, 4)
    soft = smooth(band.astype(np.float32) / 255.0, 0.003 * scene.size)
    scene.add += p["amp"] * soft * scene.lung(i)


def s_hernia(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    return {
        "dx": rng.uniform(-0.01, 0.05),
        "dy": rng.uniform(0.0, 0.05),
        "r": rng.uniform(0.035, 0.06),
        "level": rng.uniform(-0.2, 0.4),
        "air": rng.uniform(0.18, 0.3),
    }


def paint_hernia(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Hiatal hernia: a retrocardiac gas bubble with an air-fluid level and a thin wall."""
    x, y, r = a.cx + p["dx"], a.heart_y + p["dy"], p["r"]
    sy, sx, xs, ys = _box(scene.size, x, y, 1.4 * r)
    d = np.sqrt((xs - x) ** 2 + (ys - y) ** 2) / r
    inside = np.clip((1.0 - d) / 0.08, 0.0, 1.0)
    gas = inside * np.clip((y + p["level"] * r - ys) / (0.05 * r), 0.0, 1.0)
    wall = np.exp(-(((d - 1.0) / 0.08) ** 2))
    scene.air[sy, sx] += p["air"] * gas
    scene.add[sy, sx] += 0.06 * wall


def s_support_devices(rng: np.random.Generator, a: PatientAnatomy) -> Params:
    return {
        "tube": rng.random() < 0.6,
        "line": rng.random() < 0.6,
        "pacer": rng.random() < 0.3,
        "tip": rng.uniform(0.1, 0.18),
        "px": rng.uniform(0.18, 0.3),
    }


def paint_support_devices(scene: Scene, a: PatientAnatomy, p: Params) -> None:
    """Endotracheal tube, central venous line and/or pacemaker (CheXpert's 'Support Devices')."""
    canvas = np.zeros((scene.size, scene.size), np.uint8)
    if p["tube"] or not (p["line"] or p["pacer"]):
        tube = np.array([[a.cx + 0.003, -0.01], [a.cx, a.apex_y + p["tip"]]])
        cv2.polylines(canvas, [pts(tube, scene.size)], False, 255, max(1, round(0.008 * scene.size)), cv2.LINE_AA, 4)
    if p["line"]:
        t = np.linspace(0, 1, 12)
        line = np.stack([a.cx - 0.25 + 0.22 * t, a.apex_y + 0.02 + 0.2 * t**1.5], 1)
        cv2.polylines(canvas, [pts(line, scene.size)], False, 220, 1, cv2.LINE_AA, 4)
    if p["pacer"]:
        x0, y0 = a.cx + p["px"], a.apex_y + 0.04
        draw_ellipse(canvas, (x0, y0), (0.035, 0.025), 0, 255)
        lead = np.array([[x0, y0], [a.cx + 0.06, a.apex_y + 0.2], [a.cx + a.heart_x, a.heart_y + 0.04]])
        cv2.polylines(canvas, [pts(lead, scene.size)], False, 230, 1, cv2.LINE_AA, 4)
    scene.add += 0.35 * canvas.astype(np.float32) / 255.0


Sampler = Callable[[np.random.Generator, PatientAnatomy], Params]
Shaper = Callable[[Scene, Params], None]
Painter = Callable[[Scene, PatientAnatomy, Params], None]

FINDINGS: dict[str, tuple[Sampler, Shaper | None, Painter | None]] = {
    "Atelectasis": (s_atelectasis, shape_atelectasis, paint_atelectasis),
    "Cardiomegaly": (s_cardiomegaly, shape_cardiomegaly, None),
    "Effusion": (s_effusion, None, paint_effusion),
    "Infiltration": (s_infiltration, None, paint_infiltration),
    "Mass": (s_mass, None, paint_mass),
    "Nodule": (s_nodule, None, paint_nodule),
    "Pneumonia": (s_pneumonia, None, paint_pneumonia),
    "Pneumothorax": (s_pneumothorax, None, paint_pneumothorax),
    "Consolidation": (s_consolidation, None, paint_consolidation),
    "Edema": (s_edema, None, paint_edema),
    "Emphysema": (s_emphysema, shape_emphysema, paint_emphysema),
    "Fibrosis": (s_fibrosis, shape_fibrosis, paint_fibrosis),
    "Pleural_Thickening": (s_pleural_thickening, None, paint_pleural_thickening),
    "Hernia": (s_hernia, None, paint_hernia),
    "Support Devices": (s_support_devices, None, paint_support_devices),
}
