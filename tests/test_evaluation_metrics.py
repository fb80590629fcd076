"""Evaluation metrics: PSNR/SSIM against scikit-image, Dice/clDice on hand-made masks, artifacts, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from retina_sr.evaluation import (
    checkerboard_score,
    cldice,
    dice,
    psnr,
    rgb_to_y,
    ssim,
    upsample,
)


def _pair(seed: int, shape=(48, 40, 3), noise=20.0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(np.float64) + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_rgb_matches_skimage(seed):
    a, b = _pair(seed)
    ref = peak_signal_noise_ratio(a, b, data_range=255)
    assert psnr(b, a, np.ones(a.shape[:2], bool), "rgb") == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_y_matches_skimage_on_bt601_luma(seed):
    a, b = _pair(seed)
    ya, yb = rgb2ycbcr(a)[..., 0], rgb2ycbcr(b)[..., 0]
    np.testing.assert_allclose(rgb_to_y(a), ya, atol=1e-9)
    ref = peak_signal_noise_ratio(ya, yb, data_range=255)
    assert psnr(b, a, None, "y") == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_ssim_matches_skimage_wang_settings(seed):
    a, b = _pair(seed, noise=30.0)
    full = np.ones(a.shape[:2], bool)
    kw = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    ref_rgb = structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=2, **kw)
    assert ssim(b, a, full, "rgb") == pytest.approx(ref_rgb, abs=1e-9)
    ya, yb = rgb2ycbcr(a)[..., 0], rgb2ycbcr(b)[..., 0]
    assert ssim(b, a, full, "y") == pytest.approx(structural_similarity(ya, yb, **kw), abs=1e-9)


def test_masked_metrics_ignore_pixels_outside_the_mask():
    a, b = _pair(5, shape=(40, 40, 3))
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    c = b.copy()
    c[~mask] = 255 - c[~mask]  # change only outside the mask
    assert psnr(c, a, mask, "y") == pytest.approx(psnr(b, a, mask, "y"))
    # SSIM uses the mask eroded by the 5-px window radius: windows never see outside pixels
    assert ssim(c, a, mask, "rgb") == pytest.approx(ssim(b, a, mask, "rgb"))
    assert psnr(c, a, None, "y") < psnr(b, a, None, "y")


def test_psnr_identical_is_inf_and_errors_are_clear():
    a, _ = _pair(0)
    assert math.isinf(psnr(a, a))
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:10])
    with pytest.raises(ValueError, match="empty"):
        psnr(a, a, np.zeros(a.shape[:2], bool))
    with pytest.raises(ValueError, match="channel"):
        psnr(a, a, None, "lab")


def test_dice_on_hand_made_masks():
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    other = np.zeros_like(m)
    other[12:15, 12:15] = True
    assert dice(m, m) == 1.0
    assert dice(m, other) == 0.0
    half = np.zeros_like(m)
    half[5:10, 5:8] = True  # 15 of the 25 pixels
    assert dice(half, m) == pytest.approx(2 * 15 / (15 + 25))
    assert dice(np.zeros_like(m), np.zeros_like(m)) == 1.0
    # mask restricts both
    region = np.zeros_like(m)
    region[:, :8] = True
    assert dice(half, m, region) == 1.0


def test_cldice_identical_disjoint_and_shifted_line():
    line = np.zeros((30, 30), bool)
    line[14:17, 3:27] = True  # a 3-px thick horizontal vessel
    assert cldice(line, line) == pytest.approx(1.0)
    far = np.zeros_like(line)
    far[3:6, 3:27] = True
    assert cldice(far, line) == 0.0
    assert cldice(np.zeros_like(line), line) == 0.0
    # shifted by one pixel: centrelines still inside each other's volume -> clDice ~1 while Dice = 2/3
    # (only the skeleton's end spurs, which bend into the corners, may leave the other mask)
    shifted = np.roll(line, 1, axis=0)
    assert dice(shifted, line) == pytest.approx(2 / 3)
    assert cldice(shifted, line) == pytest.approx(1.0, abs=0.03)
    # shifted by two: the centre row 15 moves to 17, outside the target (14..16) -> 0
    assert cldice(np.roll(line, 2, axis=0), line) == 0.0
    # a broken vessel: half the centreline missing -> Tsens 0.5, Tprec 1 -> 2/3
    broken = line.copy()
    broken[:, 15:] = False
    assert cldice(broken, line) == pytest.approx(2 * 1.0 * 0.5 / 1.5, abs=0.06)


def test_checkerboard_score_detects_periodic_artifacts():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    hr = np.clip(gaussian_filter(rng.normal(128, 40, (64, 64, 3)), (2, 2, 0)), 0, 255).astype(np.uint8)
    assert checkerboard_score(hr, hr, 2) == pytest.approx(1.0)
    yy, xx = np.mgrid[:64, :64]
    cb = ((yy + xx) % 2 * 2 - 1)[..., None] * 6.0
    art = np.clip(np.round(hr + cb), 0, 255).astype(np.uint8)
    assert checkerboard_score(art, hr, 2) > 5.0
    # period-4 pattern counts at x4 (frequency 1/4) but barely at x2 (period 2 only)
    p4 = (np.sin(2 * np.pi * xx / 4)[..., None] * 6.0)
    art4 = np.clip(np.round(hr + p4), 0, 255).astype(np.uint8)
    assert checkerboard_score(art4, hr, 4) > 5.0
    assert checkerboard_score(art4, hr, 2) < 2.0


def test_baselines_upsample_shapes_and_identity():
    lr = np.random.default_rng(1).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    for m in ("nearest", "bicubic", "lanczos"):
        assert upsample(lr, 4, m).shape == (32, 24, 3)
        np.testing.assert_array_equal(upsample(lr, 1, m), lr)
    np.testing.assert_array_equal(upsample(lr, 2, "nearest")[::2, ::2], lr)
    with pytest.raises(ValueError, match="unknown baseline"):
        upsample(lr, 2, "bilinear-ish")


def test_checkerboard_score_on_odd_sizes():
    """Zoom 1 uses period 2; an odd-sized image (a study with scales [1] and an odd data.size) has no
    exact Nyquist bin: the nearest bins are used instead of failing the evaluation."""
    rng = np.random.default_rng(2)
    from scipy.ndimage import gaussian_filter

    hr = np.clip(gaussian_filter(rng.normal(128, 40, (63, 65, 3)), (2, 2, 0)), 0, 255).astype(np.uint8)
    assert checkerboard_score(hr, hr, 1) == pytest.approx(1.0)
    yy, xx = np.mgrid[:63, :65]
    art = np.clip(np.round(hr + ((yy + xx) % 2 * 2 - 1)[..., None] * 6.0), 0, 255).astype(np.uint8)
    assert checkerboard_score(art, hr, 1) > 5.0
