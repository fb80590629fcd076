"""FOV disc detection on EyePACS-style photographs: chord cuts, bright rims, glare, halos (issue #8)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from retina_sr.data.fov import FovError, detect_fov
from retina_sr.data.io import read_image

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _disc(h: int, w: int, cx: float, cy: float, r: float, seed: int = 0) -> np.ndarray:
    """A textured orange disc on black (a stand-in fundus photograph)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - cx, yy - cy)
    img = np.zeros((h, w, 3), np.uint8)
    base = np.array([190, 110, 60]) * (1 - 0.35 * (d / r) ** 2)[..., None]  # vignetting towards the rim
    img[d <= r] = (base[d <= r] + rng.normal(0, 6, (int((d <= r).sum()), 3))).clip(0, 255).astype(np.uint8)
    return img


def _eyepacs_like(img: np.ndarray, cx: float, cy: float, r: float, *, top: int, bottom: int,
                  rim: bool = True, glare: bool = False, halo: bool = False) -> np.ndarray:
    """Cut the disc by flat black bands (chords inside the circle, not on the image edge), add a bright
    rim along the circular border, glare spots crossing it, or a dim halo outside it."""
    img = img.copy()
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - cx, yy - cy)
    if halo:  # dim stray light beside the disc (EyePACS 110_left, 442_left)
        img[(d > r) & (d < 1.2 * r) & (xx < cx - 0.5 * r)] = 22
    if rim:
        img[(d <= r) & (d > r - 0.04 * r)] = (235, 240, 245)
    if glare:
        for a in (0.3, 0.9, 2.2, 4.0):
            gx, gy = cx + r * np.cos(a), cy + r * np.sin(a)
            img[np.hypot(xx - gx, yy - gy) < 0.05 * r] = 255
    img[:top] = 0
    img[h - bottom:] = 0
    return img


CUTS = [dict(top=60, bottom=60), dict(top=30, bottom=80, glare=True), dict(top=60, bottom=40, halo=True),
        dict(top=0, bottom=70, glare=True, halo=True)]


@pytest.mark.parametrize("kw", CUTS)
def test_chord_cut_disc_with_rim_is_accepted(kw):
    """Black bands cut the disc by straight chords near top and bottom (inside the frame): the circle
    is fitted to the circular part only, whatever the rim, glare or halo."""
    h, w, cx, cy, r = 700, 1050, 520.0, 352.0, 400.0  # the circle leaves the frame at top and bottom
    img = _eyepacs_like(_disc(h, w, cx, cy, r), cx, cy, r, **kw)
    c = detect_fov(img)
    tol = 0.01 * r  # 4 px here, 2 px at the 512-px working resolution
    assert abs(c.cx - cx) < tol and abs(c.cy - cy) < tol and abs(c.r - r) < tol, (kw, c)


@pytest.mark.parametrize("shape", ["ellipse", "rectangle", "rounded_square", "two_discs", "half_disc"])
def test_non_circular_shapes_are_still_rejected(shape):
    h, w = 400, 600
    mask = np.zeros((h, w), np.uint8)
    if shape == "ellipse":
        cv2.ellipse(mask, (300, 200), (250, 150), 0, 0, 360, 1, -1)
    elif shape == "rectangle":
        mask[60:340, 100:500] = 1
    elif shape == "rounded_square":
        mask[50:350, 150:450] = 1
        mask[50:80, 150:180] = mask[50:80, 420:450] = mask[320:350, 150:180] = mask[320:350, 420:450] = 0
    elif shape == "two_discs":
        cv2.circle(mask, (180, 200), 120, 1, -1)
        cv2.circle(mask, (420, 200), 120, 1, -1)
    else:  # a disc cut in half by a straight vertical edge: too little circle is left
        cv2.circle(mask, (300, 200), 170, 1, -1)
        mask[:, 300:] = 0
    img = np.where(mask[..., None] > 0, np.array([180, 100, 50], np.uint8), np.uint8(0))
    with pytest.raises(FovError, match="no fundus disc found"):
        detect_fov(img)


def _row_edges(img: np.ndarray, y: int, level: int = 50) -> tuple[int, int]:
    bright = np.flatnonzero(img[y].max(axis=1) > level)
    return int(bright[0]), int(bright[-1])


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["110_left", "110_right", "442_left", "442_right", "450_left", "450_right"])
def test_eyepacs_chord_cut_photos_are_accepted(shared_data, name):
    """Real EyePACS photos (3504x2336, disc cut by straight edges near top and bottom, bright rim or
    glare): accepted, and the circle meets the disc's left and right edges on its centre row."""
    img = read_image(shared_data / "eyepacs_fov" / f"{name}.jpeg")
    c = detect_fov(img)
    left, right = _row_edges(img, int(round(c.cy)))
    assert abs(left - (c.cx - c.r)) < 0.01 * c.r and abs(right - (c.cx + c.r)) < 0.01 * c.r, (c, left, right)


@pytest.mark.shared_data
def test_chase_photo_cut_by_chords_keeps_its_circle(shared_data):
    """A real CHASE_DB1 photo, cut EyePACS-style (chords at top and bottom, bright rim, glare): the
    same circle as on the uncut photo, within 3 px."""
    img = read_image(shared_data / "chase_db1" / "Image_01L.jpg")
    ref = detect_fov(img)
    cut = _eyepacs_like(img, ref.cx, ref.cy, ref.r, top=90, bottom=70, glare=True)
    c = detect_fov(cut)
    assert abs(c.cx - ref.cx) < 3 and abs(c.cy - ref.cy) < 3 and abs(c.r - ref.r) < 3, (c, ref)


def test_preprocessed_fov_leaves_out_the_black_bands_of_a_chord_cut():
    """The FOV mask is the disc within the photographed area: the black bands below and above the
    straight cuts are not retina (they would count as perfectly restored pixels in every metric)."""
    from retina_sr.data.preprocess import preprocess_image

    h, w, cx, cy, r = 700, 1050, 520.0, 352.0, 400.0
    img = _eyepacs_like(_disc(h, w, cx, cy, r), cx, cy, r, top=60, bottom=60)
    out, fov, c, box = preprocess_image(img, 200)
    f = 200 / (box[3] - box[1])
    rows = (np.arange(200) + 0.5) / f + box[1]  # source row of each output row
    cut = (rows < 60 - 2) | (rows > h - 60 + 2)
    band = (rows > 60 + 2) & (rows < h - 60 - 2)
    assert not fov[cut].any() and fov[band].mean() > 0.75
    assert out[fov].max(axis=1).min() > 0  # no black pixel inside the FOV
