"""The batched torch degradation (train.loop.degrade_on: device) against the patches stage's OpenCV one."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from retina_sr.config import PatchConfig
from retina_sr.data.degrade_torch import (
    blur,
    cv_gaussian_ksize,
    degrade_batch,
    dihedral_batch,
    gaussian_kernels,
    reflect_pad,
)
from retina_sr.data.patches import degrade
from retina_sr.training.data import OnlineDegrader, _dihedral


def _images(n=5, size=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 4, size // 4, 3)).astype(np.float32)
    smooth = np.stack([cv2.resize(b, (size, size), interpolation=cv2.INTER_CUBIC) for b in base])
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("sigma", [0.4, 1.2, 2.5, 9.6])
def test_kernels_are_opencvs(sigma):
    k = gaussian_kernels(torch.tensor([sigma]))[0].numpy()
    ref = cv2.getGaussianKernel(cv_gaussian_ksize(sigma), sigma, cv2.CV_32F)[:, 0]
    assert k.shape == ref.shape
    np.testing.assert_allclose(k, ref, atol=1e-6)


def test_kernels_of_a_mixed_batch_keep_each_width():
    k = gaussian_kernels(torch.tensor([0.4, 2.0]))
    assert k.shape == (2, cv_gaussian_ksize(2.0))
    narrow = cv2.getGaussianKernel(cv_gaussian_ksize(0.4), 0.4, cv2.CV_32F)[:, 0]
    r, n = k.shape[1] // 2, len(narrow) // 2
    np.testing.assert_allclose(k[0, r - n : r + n + 1].numpy(), narrow, atol=1e-6)
    assert float(k[0].sum()) == pytest.approx(1.0) and float(k[0, : r - n].abs().sum()) == 0.0


@pytest.mark.parametrize("pad", [1, 3, 7, 20])  # 20 > the 8-px side: OpenCV reflects again
def test_reflect_pad_is_border_reflect(pad):
    x = np.arange(8 * 8, dtype=np.float32).reshape(8, 8)
    ref = cv2.copyMakeBorder(x, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(reflect_pad(torch.from_numpy(x), pad).numpy(), ref)


def test_blur_matches_opencv_per_image_sigma():
    imgs = _images().astype(np.float32) / 255
    sig = [0.0, 0.4, 1.0, 3.0, 9.6]
    out = blur(torch.from_numpy(imgs).permute(0, 3, 1, 2), torch.tensor(sig)).permute(0, 2, 3, 1).numpy()
    for img, s, o in zip(imgs, sig, out):
        ref = img if s == 0 else cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REFLECT)
        np.testing.assert_allclose(o, ref, atol=2e-5)


@pytest.mark.parametrize("zoom", [1, 2, 4, 8])
def test_degrade_batch_matches_the_stage_degradation_without_noise(zoom):
    hr = _images()
    sig = [0.4, 0.7, 1.2, 0.9, 0.5]
    lr = degrade_batch(torch.from_numpy(hr), zoom, torch.tensor(sig), torch.zeros(5)).numpy()
    rng = np.random.default_rng(0)
    ref = np.stack([degrade(h, zoom, s, 0.0, rng) for h, s in zip(hr, sig)])
    assert lr.shape == ref.shape == (5, 32 // zoom, 32 // zoom, 3) and lr.dtype == np.uint8
    diff = np.abs(lr.astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding at the .5 quantisation edge only


def test_degrade_batch_noise_has_the_drawn_std_and_shards_draw_what_one_process_does():
    hr = np.full((4, 64, 64, 3), 128, np.uint8)
    std = torch.tensor([0.0, 0.01, 0.02, 0.04])

    def run(lo, hi):
        g = torch.Generator().manual_seed(7)
        return degrade_batch(torch.from_numpy(hr[lo:hi]), 2, torch.zeros(hi - lo), std[lo:hi], g, skip=lo)

    whole = run(0, 4)
    torch.testing.assert_close(torch.cat([run(0, 1), run(1, 3), run(3, 4)]), whole)
    measured = (whole.float() - 128).std(dim=(1, 2, 3)) / 255
    assert float(measured[0]) == 0.0
    np.testing.assert_allclose(measured[1:].numpy(), std[1:].numpy(), rtol=0.15)


def test_degrade_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        degrade_batch(torch.zeros(1, 8, 8, 3), 2, torch.ones(1), torch.zeros(1))
    with pytest.raises(ValueError, match="divisible by zoom 4"):
        degrade_batch(torch.zeros(1, 6, 6, 3, dtype=torch.uint8), 4, torch.ones(1), torch.zeros(1))


def test_dihedral_batch_is_numpys_per_image():
    x = _images(n=8, size=16)
    ks, flips = [0, 1, 2, 3, 0, 1, 2, 3], [False] * 4 + [True] * 4
    out = dihedral_batch(torch.from_numpy(x), ks, flips).numpy()
    for i in range(8):
        np.testing.assert_array_equal(out[i], _dihedral(x[i], ks[i], flips[i]))


def test_online_degrader_on_device_draws_what_the_host_path_draws():
    cfg = PatchConfig(blur_sigma=(0.4, 1.2), noise_std=(0.0, 0.0))
    deg = OnlineDegrader(cfg, seed=3)
    hr, fov = _images(n=6), np.random.default_rng(1).random((6, 32, 32)) > 0.5
    for zoom in (1, 4):
        h_host, l_host, f_host = deg(hr, zoom, step=11, fov=fov, offset=2)
        h_dev, l_dev, f_dev = deg.on_device(torch.from_numpy(hr), zoom, 11, torch.from_numpy(fov), offset=2)
        np.testing.assert_array_equal(h_dev.numpy(), h_host)  # the same dihedral transforms
        np.testing.assert_array_equal(f_dev.numpy(), f_host)
        assert np.abs(l_dev.numpy().astype(int) - l_host).max() <= 1  # the same sigmas (no noise here)


def test_online_degrader_on_device_refuses_jpeg():
    deg = OnlineDegrader(PatchConfig(jpeg_quality=(70, 90)), seed=0)
    with pytest.raises(ValueError, match="degrade_on"):
        deg.on_device(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), 2, 0)
