"""Field-of-view (FOV) detection: find the circular fundus disc of a photograph.

Fundus cameras image the retina through a circular aperture; the rest of the frame is (nearly)
black. Many EyePACS photographs cut the circle at the top and bottom - at the image edge or by a
straight chord a little inside it - many have a bright rim, glare on the rim, a dim halo of stray
light beside the disc or a small notch, and exposure varies widely. The disc is found robustly by

1. working at a reduced resolution (``work_size`` px on the long side);
2. thresholding a smoothed brightness channel (max of R, G, B) relative to the dark background
   level measured in the image corners (``bg + max(6, 0.07 * (fundus - bg))``, low enough to keep the dim vignetted rim);
3. keeping the largest connected component, holes filled;
4. taking the component's boundary points that lie neither on the image edge nor on a long straight
   horizontal/vertical run (a chord cut) - so a cut circle still yields the full disc;
5. fitting a circle to them by RANSAC (Fischler & Bolles 1981) on point triples, refined by linear
   least squares (Kasa 1976) on the inliers: halos, glare and notches are outliers, not a bias;
6. moving each point along its ray to the aperture's edge (the outer half-slope point of the
   bright-to-dark step, not the threshold, which a halo of stray light shifts outwards) and fitting again;
7. checking the fit (most of the border on the circle, enough arc visible, circle explains the component).

References: Kasa I., "A circle fitting procedure and its error analysis", IEEE Trans. Instrum. Meas.
25:8, 1976. Fischler M.A., Bolles R.C., "Random sample consensus", Comm. ACM 24:6, 1981.
ter Haar Romeny / Ben Graham's Kaggle DR preprocessing (2015) for the idea of rescaling to a fixed disc radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Circle", "FovError", "detect_fov", "fit_circle", "circle_mask", "border_points", "circle_from_mask"]


class FovError(ValueError):
    """No usable circular fundus disc was found (the message says why)."""


@dataclass(frozen=True)
class Circle:
    """A circle in pixel coordinates of the original image (x right, y down)."""

    cx: float
    cy: float
    r: float

    def scaled(self, f: float) -> Circle:
        return Circle(self.cx * f, self.cy * f, self.r * f)


def fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[Circle, np.ndarray]:
    """Algebraic least-squares circle fit (Kasa 1976); returns the circle and per-point residuals."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.size < 3:
        raise FovError("too few boundary points to fit a circle")
    a = np.column_stack([x, y, np.ones_like(x)])
    b = x**2 + y**2
    (p, q, c), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = p / 2, q / 2
    r2 = c + cx**2 + cy**2
    if not np.isfinite(r2) or r2 <= 0:
        raise FovError("boundary points do not form a circle")
    r = float(np.sqrt(r2))
    res = np.hypot(x - cx, y - cy) - r
    return Circle(float(cx), float(cy), r), res


def circle_mask(shape: tuple[int, int], circle: Circle) -> np.ndarray:
    """Boolean (H, W) disc mask (pixel centres within the circle)."""
    h, w = shape
    yy, xx = np.ogrid[0:h, 0:w]
    return (xx - circle.cx) ** 2 + (yy - circle.cy) ** 2 <= circle.r**2


def _brightness(img: np.ndarray) -> np.ndarray:
    ch = img.max(axis=2) if img.ndim == 3 else img
    return cv2.medianBlur(np.ascontiguousarray(ch), 5)


def _straight_runs(pts: np.ndarray, min_len: int, wobble: float = 1.0) -> np.ndarray:
    """Mask of closed-contour points within ``min_len`` consecutive points whose y (or x) varies by at most
    ``wobble`` px: a horizontal (vertical) straight cut, jagged by JPEG noise and the threshold."""
    n = len(pts)
    if n < 2 * min_len:
        return np.zeros(n, bool)
    windows = (np.arange(n)[:, None] + np.arange(min_len)) % n  # the window starting at each point
    out = np.zeros(n, bool)
    for v in (pts[:, 0], pts[:, 1]):
        flat = (np.ptp(v[windows], axis=1) <= wobble).astype(float)
        # point i is covered by the windows starting at i - min_len + 1 .. i
        out |= np.convolve(np.r_[flat[n - min_len + 1:], flat], np.ones(min_len), "valid") > 0
    return out


def border_points(region: np.ndarray) -> np.ndarray:
    """(N, 2) x, y boundary points of the largest region of a mask that can lie on its circle: not on
    the image edge, not on a straight horizontal/vertical cut (flatter and longer than a circle's apex)."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return np.empty((0, 2))
    pts = max(contours, key=len)[:, 0, :].astype(np.float64)
    h, w = region.shape
    on_edge = (pts[:, 0] <= 1) | (pts[:, 1] <= 1) | (pts[:, 0] >= w - 2) | (pts[:, 1] >= h - 2)
    r0 = 0.5 * max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]))
    # a circle of radius r stays within two rows of its apex for ~4 sqrt(r) px: shorter flat runs are arcs
    return pts[~on_edge & ~_straight_runs(pts, max(8, int(np.ceil(6 * np.sqrt(r0)))))]


def circle_from_mask(mask: np.ndarray) -> Circle | None:
    """The circle of a given (exact) FOV mask, fitted to its border points; None if too little border."""
    pts = border_points(mask > 0)
    return fit_circle(pts[:, 0], pts[:, 1])[0] if len(pts) >= 20 else None


def _circumcircles(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres and radii of the circles through point triples ``p`` (T, 3, 2); nan for collinear ones."""
    (ax, ay), (bx, by), (cx, cy) = (p[:, i].T for i in range(3))
    sa, sb, sc = ax**2 + ay**2, bx**2 + by**2, cx**2 + cy**2
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (sa * (by - cy) + sb * (cy - ay) + sc * (ay - by)) / d
        uy = (sa * (cx - bx) + sb * (ax - cx) + sc * (bx - ax)) / d
    return ux, uy, np.hypot(ax - ux, ay - uy)


def _ransac_circle(pts: np.ndarray, tol: float, shape: tuple[int, int], trials: int = 128,
                   ) -> tuple[Circle, np.ndarray]:
    """RANSAC: of the circles through random point triples with a plausible disc size and centre, the
    one most points lie within ``tol`` of, refined by least squares on its inliers (seeded: deterministic).
    Returns the circle and the inlier mask. With half the points inliers (the least :func:`detect_fov`
    accepts) 128 triples all miss with probability (1 - 1/8)^128 < 1e-7."""
    h, w = shape
    idx = np.random.default_rng(0).integers(0, len(pts), (trials, 3))
    ux, uy, r = _circumcircles(pts[idx])
    ok = (r >= 0.2 * min(h, w)) & (r <= 0.75 * max(h, w)) & (ux >= 0) & (ux < w) & (uy >= 0) & (uy < h)
    if not ok.any():
        raise FovError("no fundus disc found: no circle of plausible size and position fits the border")
    ux, uy, r = (v[ok, None].astype(np.float32) for v in (ux, uy, r))
    p32 = pts.astype(np.float32)
    hits = np.abs(np.hypot(p32[:, 0] - ux, p32[:, 1] - uy) - r) < tol
    inl = hits[int(np.argmax(hits.sum(axis=1)))]
    for _ in range(4):  # least-squares refit on the inliers until they no longer change
        circle, _ = fit_circle(pts[inl, 0], pts[inl, 1])
        new = np.abs(np.hypot(pts[:, 0] - circle.cx, pts[:, 1] - circle.cy) - circle.r) < tol
        if (new == inl).all() or new.sum() < 3:
            break
        inl = new
    return circle, inl


# where a blurred edge ends: its outer half-slope point. Measured on HRF at 1/4 scale, the radius is
# +1.1 px from the FOV masks' (0.25: +1.4, 1.0: +0.5); the EyePACS sample's halos stay outside
_EDGE_FOOT = 0.5


def _refine_edge(ch: np.ndarray, circle: Circle, pts: np.ndarray, band: tuple[float, float] = (0.8, 1.1),
                 ) -> np.ndarray:
    """Move border points along their ray from the centre to the outer foot of the steepest bright-to-dark
    step of ``ch`` within ``band`` x radius: the aperture's edge, which a threshold misses by the width of
    a dim halo of stray light outside it (EyePACS) or of a dark vignetted rim inside it."""
    d = pts - (circle.cx, circle.cy)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
    radii = circle.r * band[0] + 0.5 * np.arange(max(4, int(circle.r * (band[1] - band[0]) / 0.5)))
    xs = (circle.cx + d[:, :1] * radii).astype(np.float32)
    ys = (circle.cy + d[:, 1:] * radii).astype(np.float32)
    prof = cv2.remap(ch, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    g = np.pad(prof[:, 2:] - prof[:, :-2], ((0, 0), (1, 1)))  # radial derivative (central difference)
    k = np.argmin(g, axis=1)
    past = (np.arange(g.shape[1]) > k[:, None]) & (g > _EDGE_FOOT * g[np.arange(len(k)), k][:, None])
    j = np.where(past.any(axis=1), np.argmax(past, axis=1), k)
    return np.column_stack([circle.cx, circle.cy]) + d * radii[j][:, None]


def _downscale(img: np.ndarray, work_size: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    f = min(1.0, work_size / max(h, w))
    if f == 1.0:
        return img, f
    return cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA), f


def _disc_region(ch: np.ndarray, threshold_frac: float) -> np.ndarray:
    """The largest bright region (holes filled, uint8 0/1) of a working-size brightness channel; FovError if none."""
    sh, sw = ch.shape
    if ch.max() < 15:
        raise FovError("all black (no pixel brighter than 15/255)")
    k = max(3, min(sh, sw) // 20)
    corners = np.concatenate([ch[:k, :k].ravel(), ch[:k, -k:].ravel(), ch[-k:, :k].ravel(), ch[-k:, -k:].ravel()])
    bg = float(np.median(corners))
    fundus = float(np.percentile(ch, 90))
    if fundus - bg < 12 or bg > 0.5 * fundus:
        raise FovError(
            f"no fundus disc found: no dark border around a bright disc (corners {bg:.0f}, bright {fundus:.0f})"
        )
    t = bg + max(6.0, threshold_frac * (fundus - bg))  # low: keep the dim vignetted rim of the disc
    mask = (ch > t).astype(np.uint8)
    kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kern)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kern)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        raise FovError("no fundus disc found: nothing brighter than the background")
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[big, cv2.CC_STAT_AREA])
    if area < 0.1 * sh * sw:
        raise FovError(f"no fundus disc found: largest bright region covers only {area / (sh * sw):.0%} of the image")
    contours, _ = cv2.findContours((labels == big).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros((sh, sw), np.uint8)
    cv2.drawContours(filled, [max(contours, key=len)], -1, 1, thickness=-1)
    return filled


def _check_fit(circle: Circle, pts: np.ndarray, inl: np.ndarray, region: np.ndarray, f: float) -> None:
    """Raise :class:`FovError` unless the circle is the border of ``region`` (working pixels)."""
    sh, sw = region.shape
    share = float(inl.mean())
    if inl.sum() < 20 or share < 0.5:
        raise FovError(f"no fundus disc found: the border is not circular (only {share:.0%} of it lies on one circle)")
    ang = np.arctan2(pts[inl, 1] - circle.cy, pts[inl, 0] - circle.cx)
    cover = np.unique(np.floor((ang + np.pi) / (2 * np.pi) * 36).astype(int)).size / 36
    if cover < 0.3:
        raise FovError(f"no fundus disc found: only {cover:.0%} of a circular border is visible")
    if circle.r < 0.2 * min(sh, sw) or circle.r > 0.75 * max(sh, sw):
        raise FovError(f"no fundus disc found: implausible disc radius {circle.r / f:.0f} px")
    if not (0 <= circle.cx < sw and 0 <= circle.cy < sh):
        raise FovError("no fundus disc found: circle centre outside the image")
    disc, bright = circle_mask((sh, sw), circle), region > 0
    iou = float((disc & bright).sum()) / float((disc | bright).sum())
    if iou < 0.8:
        raise FovError(f"no fundus disc found: the circle explains only {iou:.0%} of the bright region")


def detect_fov(img: np.ndarray, *, work_size: int = 512, threshold_frac: float = 0.07) -> Circle:
    """Detect the circular fundus disc of an RGB ``uint8`` image; returns it in original pixels.

    Raises :class:`FovError` for all-black images, images without a dark border (e.g. uniform grey,
    noise, non-fundus pictures) and shapes that are not a circle.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise FovError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    small, f = _downscale(img, work_size)
    ch = _brightness(small).astype(np.float32)
    region = _disc_region(ch, threshold_frac)
    pts = border_points(region)
    if len(pts) < 20:
        raise FovError("no fundus disc found: the bright region has no circular border inside the image")
    # inlier band: contour quantisation, JPEG ringing and the threshold's wobble along a real rim
    tol = max(1.5, 0.005 * max(region.shape))
    circle, inl = _ransac_circle(pts, tol, region.shape)
    pts = _refine_edge(ch, circle, pts)
    circle, inl = _ransac_circle(pts, tol, region.shape)
    _check_fit(circle, pts, inl, region, f)
    if f < 1:  # pixel centres: x_orig + 0.5 = (x_small + 0.5) / f
        return Circle((circle.cx + 0.5) / f - 0.5, (circle.cy + 0.5) / f - 0.5, circle.r / f)
    return circle
