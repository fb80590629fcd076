"""The fixed vessel segmenter on a hand-drawn fundus-like phantom, and calibre-resolved recovery."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from retina_sr.evaluation import (
    VesselSegmenter,
    calibre_recovery,
    cldice,
    dice,
    thinnest_recovered,
)

WIDTHS = (1, 2, 3, 4, 6)


def draw_phantom(size: int = 256, widths=WIDTHS, seed: int = 0, contrast: float = 1.0):
    """A fundus-like test image: reddish disc with illumination fall-off, dark wavy vessels of the given
    widths (px), slight blur and sensor noise. Returns (rgb uint8, fov, true vessel mask, calibre map)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    r = np.hypot(yy - c, xx - c)
    fov = r < 0.47 * size
    illum = 1.0 - 0.35 * (r / (0.47 * size)) ** 2
    img = np.stack([200 * illum, 90 * illum, 45 * illum], -1)
    true = np.zeros((size, size), np.uint8)
    cal = np.zeros((size, size), np.float32)
    for i, w in enumerate(widths):
        y0 = size * (0.2 + 0.6 * i / (len(widths) - 1))
        xs = np.arange(int(0.1 * size), int(0.9 * size))
        ys = y0 + 0.04 * size * np.sin(2 * np.pi * xs / size * 1.5 + i)
        pts = np.stack([xs, ys], 1).round().astype(np.int32)
        layer = np.zeros_like(true)
        cv2.polylines(layer, [pts], False, 1, thickness=w, lineType=cv2.LINE_8)
        true |= layer
        cal[layer > 0] = w
    true = true.astype(bool) & fov
    cal[~true] = 0
    # vessels absorb mostly green (haemoglobin), a little red and blue
    img[true] *= 1.0 - contrast * np.array([0.15, 0.45, 0.3])
    img = cv2.GaussianBlur(img, (0, 0), 0.6) + rng.normal(0, 2, img.shape)
    img[~fov] = 0
    return np.clip(img, 0, 255).astype(np.uint8), fov, true, cal


def test_segmenter_recovers_phantom_vessels():
    img, fov, true, _ = draw_phantom()
    res = VesselSegmenter().segment(img, fov)
    # Threshold 0.75: unsupervised Hessian filters reach Dice ~0.7-0.8 against manual masks on real
    # photographs (HRF, DRIVE) and do better on clean synthetic vessels (0.87 here); 0.75 fails if
    # the segmenter loses the thin vessels, bleeds over the wide ones or picks up the FOV rim.
    assert dice(res.mask, true, res.region) > 0.75
    assert cldice(res.mask, true, res.region) > 0.85
    assert not (res.mask & ~res.region).any()  # nothing outside the eroded FOV (no rim artifacts)


def test_segmenter_is_deterministic_and_threshold_is_reused():
    img, fov, _, _ = draw_phantom(size=192, seed=3)
    seg = VesselSegmenter()
    a, b = seg.segment(img, fov), seg.segment(img.copy(), fov.copy())
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.threshold == b.threshold
    # an output segmented with the HR threshold: a blurred copy loses vessel pixels
    blurred = cv2.GaussianBlur(img, (0, 0), 2.0)
    out = seg.segment(blurred, fov, a.threshold)
    assert out.threshold == a.threshold
    assert dice(out.mask, a.mask, a.region) < 0.95


def test_segmenter_rejects_bad_input():
    img, fov, _, _ = draw_phantom(size=128)
    with pytest.raises(ValueError, match="RGB uint8"):
        VesselSegmenter().segment(img[..., 0], fov)
    with pytest.raises(ValueError, match="empty"):
        VesselSegmenter().segment(img, np.zeros_like(fov))
    flat = np.full_like(img, 120)
    with pytest.raises(ValueError, match="constant"):
        VesselSegmenter().segment(flat, fov)


def test_calibre_recovery_finds_the_thinnest_recovered_bin():
    _, _, true, cal = draw_phantom(size=128)
    # a segmentation that finds only the vessels of calibre >= 3 px
    seg = true & (cal >= 3)
    bins = calibre_recovery(seg, true, cal)
    lows = [b[0] for b in bins]
    assert lows == sorted(lows) and lows[0] == 1.0
    recall = {b[0]: b[3] for b in bins}
    assert recall[1.0] == 0.0 and recall[2.0] == 0.0 and recall[3.0] == 1.0
    assert thinnest_recovered(bins) == pytest.approx(3.0)
    assert thinnest_recovered(calibre_recovery(true, true, cal)) == pytest.approx(1.0)
    assert thinnest_recovered(calibre_recovery(np.zeros_like(true), true, cal)) == float("inf")  # none recovered
    assert np.isnan(thinnest_recovered([]))


def test_image_scores_exclude_the_fov_rim_like_the_vessel_scores():
    """PSNR/SSIM are taken over the segmenter's region (the FOV less its rim), as Dice is: an output that
    differs from HR only in the rim band scores like a perfect one, one that differs inside does not."""
    from retina_sr.evaluation.runner import evaluate_outputs, make_reference

    img, fov, _, _ = draw_phantom()
    seg = VesselSegmenter()
    ref = make_reference("p", "phantom", img, fov, None, None, seg)
    rim = fov & ~ref.seg.region
    assert rim.any() and ref.seg.region.any()
    spoiled = img.copy()
    spoiled[rim] = 255 - spoiled[rim]
    scores, _ = evaluate_outputs(spoiled, ref, 2, seg)
    assert math.isinf(scores["psnr_y"]) and math.isinf(scores["psnr_rgb"])
    assert scores["ssim_y"] == pytest.approx(1.0) and scores["ssim_rgb"] == pytest.approx(1.0)
    inside = img.copy()
    inside[ref.seg.region] ^= 8
    scores, _ = evaluate_outputs(inside, ref, 2, seg)
    assert 20 < scores["psnr_y"] < 60
