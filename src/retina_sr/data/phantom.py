"""Procedural fundus phantoms with exact vessel ground truth.

A phantom is a synthetic colour fundus photograph of a macula-centred 45 degree field: circular
field of view (FOV) on black, illumination fall-off, orange-red fundus colour with choroidal
texture, a bright optic disc (with cup) on the nasal side, a darker macula and fovea at the centre,
and a branching vessel tree (arteries and veins) growing out of the disc, with the temporal arcades
bending around the macula, Murray's-law calibres from ~12 px down to sub-pixel, optimal bifurcation
angles, tortuosity and an optional central light reflex on the large vessels. Sensor noise and a
slight optical blur finish the image.

Because the tree is drawn by us, every vessel pixel and its calibre are known exactly: the binary
vessel mask (every vessel at least one pixel wide) and a calibre map (vessel diameter in HR pixels)
let the evaluation measure the thinnest vessel a super-resolution model preserves.

References
----------
- Murray C.D., "The physiological principle of minimum work: I. The vascular system and the cost of
  blood volume", PNAS 12:207, 1926 (d0^3 = d1^3 + d2^3 and the optimal branching angles).
- Zamir M., "Optimality principles in arterial branching", J. Theor. Biol. 62:227, 1976.
- Fiorini S. et al., "Automatic generation of synthetic retinal fundus images: vascular network",
  Procedia Computer Science 90:54, 2016 (procedural retinal vasculature).
- Budai A. et al., "Robust vessel segmentation in fundus images", Int. J. Biomed. Imaging, 2013
  (HRF: anatomical proportions - disc diameter ~1/7 of the FOV diameter, vessel calibres).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Phantom", "generate_phantom"]


@dataclass(frozen=True)
class Phantom:
    """A generated fundus photograph and its exact ground truth (all (H, W) at the image resolution)."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    vessels: np.ndarray  # bool (H, W): every vessel, at least one pixel wide
    calibre: np.ndarray  # float32 (H, W): vessel diameter in pixels (0 outside vessels)
    fov: np.ndarray  # bool (H, W): the circular field of view
    seed: int


@dataclass
class _Branch:
    x: float
    y: float
    angle: float  # heading in radians (image coordinates, y down)
    diameter: float  # pixels
    artery: bool
    curvature: float  # systematic turning rate (rad / px)
    generation: int
    side: int = 1  # side of the next side branch (alternates along a vessel)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean unit-std Gaussian-filtered white noise (computed at reduced size for large sigma)."""
    h, w = shape
    f = max(1, int(sigma // 4))
    small = rng.standard_normal((max(2, h // f), max(2, w // f))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), max(0.5, sigma / f))
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / (out.std() + 1e-8)


def _grow_tree(
    rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float,
    disc: tuple[float, float], fovea: tuple[float, float], side: int,
) -> list[tuple[float, float, float, float, float, bool]]:
    """Grow arteries and veins from the optic disc; returns segments (x0, y0, x1, y1, d, artery)."""
    u = size / 768.0  # everything is designed at 768 px and scaled
    cx, cy = centre
    fx, fy = fovea
    ox, oy = disc
    temporal = math.atan2(fy - oy, fx - ox)  # heading from the disc towards the fovea
    segments: list[tuple[float, float, float, float, float, bool]] = []
    stack: list[tuple[float, int, _Branch]] = []  # max-heap on diameter: big vessels first
    counter = 0

    def push(br: _Branch) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(stack, (-br.diameter, counter, br))

    # main trunks: superior/inferior temporal arcades (bend round the macula), nasal and small ones
    for vert in (-1, 1):  # -1 superior (up), +1 inferior
        for artery in (False, True):
            d0 = (10.5 if not artery else 7.5) * u * rng.uniform(0.9, 1.1)
            a0 = temporal + vert * rng.uniform(1.45, 1.65) + (0.1 if artery else -0.05) * vert
            curv = -vert * rng.uniform(1.5, 1.8) / radius  # turn back towards the horizontal raphe
            push(_Branch(ox + rng.normal(0, 3 * u), oy + vert * rng.uniform(2, 8) * u, a0, d0, artery, curv, 0))
            # nasal trunk
            d1 = (7.5 if not artery else 6.0) * u * rng.uniform(0.85, 1.1)
            a1 = temporal + math.pi - vert * rng.uniform(0.5, 1.0)
            push(_Branch(ox, oy + vert * 4 * u, a1, d1, artery, vert * 0.6 / radius, 0))
        # small macular branch heading straight to the macula
        push(_Branch(ox, oy, temporal + vert * rng.uniform(0.15, 0.35), 3.0 * u, bool(vert > 0), 0.0, 1))

    step = 1.5 * u
    min_d = 0.3 * u
    max_branches = 260
    n_branches = 0
    fovea_free = 0.07 * radius  # foveal avascular zone
    while stack and n_branches < max_branches:
        b = heapq.heappop(stack)[2]
        n_branches += 1
        length = (30.0 + 16.0 * b.diameter / u) * u * rng.uniform(0.6, 1.4)
        turn = 0.0
        walked = 0.0
        x, y, a, d = b.x, b.y, b.angle, b.diameter
        alive = True
        while walked < length:
            turn = 0.9 * turn + rng.normal(0, 0.007) * (1.0 + 1.0 * u / max(d, u))  # tortuosity
            # steer away from the fovea (the arcades embrace the macula)
            dfx, dfy = fx - x, fy - y
            dist_f = math.hypot(dfx, dfy)
            steer = 0.0
            if dist_f < 0.25 * radius:
                to_f = math.atan2(dfy, dfx)
                diff = (a - to_f + math.pi) % (2 * math.pi) - math.pi
                if abs(diff) < math.pi / 2:
                    steer = math.copysign(0.006, diff) * min(3.0, 0.25 * radius / max(dist_f, 1.0))
            fade = math.exp(-math.hypot(x - ox, y - oy) / (1.2 * radius))  # arcade bend fades out
            off = (a - temporal + math.pi) % (2 * math.pi) - math.pi
            bend = 0.0 if off * b.curvature > 0 and abs(off) > 0.3 else b.curvature * fade  # no over-bending
            a += turn + bend * step + steer
            nx, ny = x + step * math.cos(a), y + step * math.sin(a)
            if math.hypot(nx - cx, ny - cy) > radius * 1.02 or math.hypot(nx - fx, ny - fy) < fovea_free:
                alive = False
                segments.append((x, y, nx, ny, d, b.artery))
                break
            segments.append((x, y, nx, ny, d, b.artery))
            x, y = nx, ny
            walked += step
            d *= 1.0 - 0.0006 * step / u  # slight tapering
        if not alive or d < min_d:
            continue
        if d < 2.0 * u and rng.random() < 0.6:  # small vessels: a terminal run, no further split
            push(_Branch(x, y, a, d * 0.8, b.artery, 0.0, 99))
            continue
        if b.generation >= 99:
            continue
        # bifurcation: Murray's law d^3 = d1^3 + d2^3, asymmetric; optimal angles (Zamir 1976)
        ratio = rng.uniform(0.88, 0.99)
        d1 = d * ratio
        d2 = d * (1.0 - ratio**3) ** (1.0 / 3.0)
        cos1 = (d**4 + d1**4 - d2**4) / (2 * d**2 * d1**2)
        cos2 = (d**4 + d2**4 - d1**4) / (2 * d**2 * d2**2)
        th1 = math.acos(max(-1.0, min(1.0, cos1)))
        th2 = math.acos(max(-1.0, min(1.0, cos2)))
        s = b.side if rng.random() < 0.8 else -b.side
        if d1 >= min_d:
            push(_Branch(x, y, a + s * th1, d1, b.artery, b.curvature, b.generation, -s))
        if d2 >= min_d:
            push(_Branch(x, y, a - s * th2, d2, b.artery, rng.normal(0, 0.3) / radius, b.generation + 1,
                         1 if rng.random() < 0.5 else -1))
    return segments


def generate_phantom(size: int = 768, seed: int = 0, *, light_reflex: bool = True) -> Phantom:
    """Generate one deterministic fundus phantom of ``size`` x ``size`` pixels for ``seed``.

    Returns the RGB image with its exact vessel mask, calibre map and FOV mask (see module doc).
    """
    if size < 64:
        raise ValueError(f"phantom size {size} is too small (>= 64 px)")
    rng = np.random.default_rng(seed)
    u = size / 768.0
    h = w = size
    cx = w / 2 + rng.normal(0, 4 * u)
    cy = h / 2 + rng.normal(0, 4 * u)
    radius = size * rng.uniform(0.45, 0.48)
    side = 1 if rng.random() < 0.5 else -1  # +1: right eye (disc on the right)
    disc = (cx + side * radius * rng.uniform(0.62, 0.72), cy + rng.normal(0, 0.04) * radius)
    fovea = (cx - side * radius * rng.uniform(0.0, 0.08), cy + rng.normal(0, 0.03) * radius)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho = np.hypot(xx - cx, yy - cy) / radius

    # ---- background: pigmentation, choroidal texture, illumination fall-off
    base = np.array([0.95, 0.40, 0.26], np.float32) * rng.uniform(0.9, 1.05, 3).astype(np.float32)
    base[1] = min(base[1], base[0] * 0.6)
    base[2] = min(base[2], base[1] * 0.8)
    tex = 0.025 * _smooth_noise(rng, (h, w), 30 * u) + 0.02 * _smooth_noise(rng, (h, w), 5 * u) \
        + 0.012 * _smooth_noise(rng, (h, w), 1.2 * u)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = base[c] * (1.0 + tex * (1.0, 1.4, 1.2)[c])
    gx, gy = rng.normal(0, 0.08, 2)
    illum = (1.0 - 0.4 * np.clip(rho, 0, 1.2) ** 3) * (1.0 + gx * (xx - cx) / radius + gy * (yy - cy) / radius)
    # ---- macula and fovea: darker, less yellow-red
    df = np.hypot(xx - fovea[0], yy - fovea[1]) / radius
    mac = 0.28 * np.exp(-(df / 0.2) ** 2) + 0.22 * np.exp(-(df / 0.045) ** 2)
    img *= 1.0 - mac[..., None] * np.array([0.8, 1.0, 0.9], np.float32)
    # ---- optic disc: bright yellow-orange rim, whiter cup, soft edge
    r_od = radius * rng.uniform(0.10, 0.12)
    dd = np.hypot((xx - disc[0]) / 1.0, (yy - disc[1]) / 1.08) / r_od
    a_disc = 1.0 / (1.0 + np.exp(np.clip((dd - 1.0) * 18.0, -50, 50)))
    cup = (disc[0] - side * 0.12 * r_od, disc[1])
    dc = np.hypot(xx - cup[0], yy - cup[1]) / (r_od * rng.uniform(0.35, 0.5))
    a_cup = 1.0 / (1.0 + np.exp(np.clip((dc - 1.0) * 6.0, -50, 50)))
    disc_col = np.array([1.0, 0.78, 0.52], np.float32)
    cup_col = np.array([1.0, 0.93, 0.80], np.float32)
    img = img * (1 - a_disc[..., None]) + disc_col * a_disc[..., None] * (0.95 + 0.05 * tex[..., None])
    img = img * (1 - 0.8 * a_cup[..., None]) + cup_col * 0.8 * a_cup[..., None]

    # ---- vessels: drawn 3x supersampled for sub-pixel calibres, composed multiplicatively
    k = 3
    segs = _grow_tree(rng, size, (cx, cy), radius, disc, fovea, side)
    segs.sort(key=lambda s: s[4])  # thin first, thick drawn over them
    cov = {True: np.zeros((h * k, w * k), np.uint8), False: np.zeros((h * k, w * k), np.uint8)}
    reflex = np.zeros((h * k, w * k), np.uint8)
    calibre = np.zeros((h, w), np.float32)
    shift = 4  # cv2 fixed-point sub-pixel coordinates
    sc = float(1 << shift)
    for x0, y0, x1, y1, d, art in segs:
        t = max(1, int(round(d * k)))
        val = int(round(255 * min(1.0, d * k)))
        p0 = (int((x0 * k + k / 2) * sc), int((y0 * k + k / 2) * sc))
        p1 = (int((x1 * k + k / 2) * sc), int((y1 * k + k / 2) * sc))
        cv2.line(cov[art], p0, p1, val, t, cv2.LINE_AA, shift)
        if light_reflex and d > 4.0 * u:
            cv2.line(reflex, p0, p1, 255, max(1, int(round(d * k / 4))), cv2.LINE_AA, shift)
        q0 = (int((x0 + 0.5) * sc), int((y0 + 0.5) * sc))
        q1 = (int((x1 + 0.5) * sc), int((y1 + 0.5) * sc))
        cv2.line(calibre, q0, q1, float(d), max(1, int(round(d))), cv2.LINE_8, shift)
    a_v = cv2.resize(cov[False], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    a_a = cv2.resize(cov[True], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    a_r = cv2.resize(reflex, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    # vessels absorb green/blue much more than red: darker and redder than the background
    vein_abs = np.array([0.30, 0.58, 0.48], np.float32)
    art_abs = np.array([0.14, 0.38, 0.32], np.float32)
    img *= 1.0 - a_v[..., None] * vein_abs
    img *= 1.0 - a_a[..., None] * art_abs
    img += a_r[..., None] * np.array([0.10, 0.07, 0.05], np.float32) * img / np.maximum(base, 1e-3) * 0.5

    # ---- FOV, illumination, optics, sensor
    fov_soft = np.clip((1.0 - rho) * radius + 0.5, 0, 1).astype(np.float32)
    img *= (illum * fov_soft)[..., None]
    img = cv2.GaussianBlur(img, (0, 0), 0.6 * max(u, 0.5))
    img += rng.normal(0, 1.2 / 255, img.shape).astype(np.float32) * (0.3 + fov_soft[..., None])
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    fov = rho <= 1.0
    calibre *= fov
    return Phantom(image=image, vessels=calibre > 0, calibre=calibre, fov=fov, seed=seed)
