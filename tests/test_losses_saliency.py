"""Handcrafted retinal saliency (Mahapatra et al. 2017): phantom vessels, real photographs, the loss."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from retina_sr.losses import SaliencyLoss, charbonnier, intensity_contrast, saliency_map, texture_energy, vesselness

torch.set_num_threads(1)

def _phantom(h: int = 96, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Smooth reddish fundus-like background with dark thin 'vessels'; returns image, vessel and far-background masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:h] / h
    bg = np.stack([0.75 - 0.15 * xx, 0.35 + 0.1 * yy, 0.15 + 0.05 * xx], -1).astype(np.float32)
    bg += 0.01 * rng.standard_normal(bg.shape).astype(np.float32)  # mild noise
    ves = np.zeros((h, h), np.uint8)
    cv2.line(ves, (5, 10), (h - 5, int(0.8 * h)), 1, 2)
    cv2.line(ves, (10, h - 10), (int(0.8 * h), 5), 1, 1)
    cv2.circle(ves, (h // 2, h // 2), h // 3, 1, 1)
    img = bg.copy()
    img[ves > 0] *= 0.6
    far = cv2.dilate(ves, np.ones((11, 11), np.uint8)) == 0
    return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1)[None], ves > 0, far


def test_saliency_highlights_phantom_vessels():
    img, ves, far = _phantom()
    s = saliency_map(img)
    assert s.shape == (1, 1, 96, 96)
    assert float(s.min()) >= 0.0 and float(s.max()) == pytest.approx(1.0, abs=1e-5)
    s = s[0, 0].numpy()
    assert s[ves].mean() > 5 * s[far].mean()
    # every cue on its own prefers the vessels
    for cue in (intensity_contrast, texture_energy, vesselness):
        c = cue(img)[0, 0].numpy()
        assert c[ves].mean() > 3 * c[far].mean(), cue.__name__


def test_vesselness_prefers_dark_lines():
    img, ves, far = _phantom()
    dark = vesselness(img)[0, 0].numpy()
    bright = vesselness(1 - img)[0, 0].numpy()  # inverted: vessels become bright lines
    assert dark[ves].mean() > 5 * bright[ves].mean()
    assert vesselness(1 - img, dark=False)[0, 0].numpy()[ves].mean() > 5 * bright[ves].mean()


def test_saliency_is_differentiable_and_masked():
    img, _, _ = _phantom(48)
    x = img.clone().requires_grad_(True)
    saliency_map(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    mask = torch.zeros(1, 48, 48)
    mask[:, 8:40, 8:40] = 1
    s = saliency_map(img, mask=mask)
    assert float(s[..., :8, :].abs().sum()) == 0.0 and float(s.max()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="mask shape"):
        saliency_map(img, mask=torch.ones(1, 1, 10, 10))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        saliency_map(img[:, :1])
    # tiny images still work (pyramid levels beyond the size are skipped)
    assert saliency_map(torch.rand(2, 3, 8, 8)).shape == (2, 1, 8, 8)


def test_saliency_loss_weights_errors_on_vessels():
    img, ves, far = _phantom()
    loss = SaliencyLoss("weighted")
    assert float(loss(img, img)) == pytest.approx(1e-3, rel=1e-3)
    vmask = torch.from_numpy(ves)[None, None].float()
    fmask = torch.from_numpy(far)[None, None].float()
    err_on_vessels = loss(img + 0.1 * vmask, img)
    err_on_background = loss(img + 0.1 * fmask, img)
    # unweighted, the background error is the larger one (more pixels) ...
    assert float(charbonnier(img + 0.1 * fmask, img)) > float(charbonnier(img + 0.1 * vmask, img))
    # ... weighted by saliency, errors on vessels count more per pixel
    per_px_v = float(err_on_vessels) / ves.mean()
    per_px_b = float(err_on_background) / far.mean()
    assert per_px_v > 3 * per_px_b


def test_saliency_loss_compare_mode():
    img, _, _ = _phantom(48)
    loss = SaliencyLoss("compare")
    assert float(loss(img, img)) == pytest.approx(1e-3, rel=1e-3)
    blurred = torch.from_numpy(cv2.GaussianBlur(img[0].permute(1, 2, 0).numpy(), (0, 0), 2)).permute(2, 0, 1)[None]
    pred = blurred.clone().requires_grad_(True)
    value = loss(pred, img)
    assert float(value.detach()) > 0.02
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mode"):
        SaliencyLoss("other")  # type: ignore[arg-type]


def _load_real(root, img_rel: str, ves_rel: str, fov_rel: str | None, scale: float):
    from retina_sr.data.io import read_image, read_mask

    img = read_image(root / img_rel)
    ves = read_mask(root / ves_rel)
    fov = read_mask(root / fov_rel) if fov_rel else img[..., 0] > 25
    size = (int(img.shape[1] * scale), int(img.shape[0] * scale))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    ves = cv2.resize(ves.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    fov = cv2.erode(cv2.resize(fov.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST), np.ones((15, 15))) > 0
    return img, ves, fov


@pytest.mark.shared_data
@pytest.mark.parametrize("case", [
    ("chase_db1/Image_01L.jpg", "chase_db1/Image_01L_1stHO.png", None, 0.5),
    ("hrf/images/01_h.jpg", "hrf/manual1/01_h.tif", "hrf/mask/01_h_mask.tif", 0.15),
], ids=["chase_db1", "hrf"])
def test_saliency_on_real_fundus_photographs(shared_data, case):
    """Uses ../shared/data (skipped by the fixture when absent)."""
    if not (shared_data / case[0]).is_file():
        pytest.skip(f"{shared_data / case[0]} missing (see ../shared/data/README.md)")
    img, ves, fov = _load_real(shared_data, *case)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    m = torch.from_numpy(fov)[None, None].float()
    background = fov & (cv2.dilate(ves.astype(np.uint8), np.ones((7, 7), np.uint8)) == 0)
    s = saliency_map(t, mask=m)[0, 0].numpy()
    v = vesselness(t)[0, 0].numpy()
    # annotated vessels are clearly more salient than the vessel-free retina
    assert s[ves & fov].mean() > 1.5 * s[background].mean()
    assert v[ves & fov].mean() > 8 * v[background].mean()


def test_saliency_highlights_the_phantom_vessels():
    """On the demo's own fundus phantom, saliency on its exact vessel mask exceeds the vessel-free retina."""
    from retina_sr.data.phantom import generate_phantom

    ph = generate_phantom(size=256, seed=3)
    img = torch.from_numpy(ph.image).permute(2, 0, 1)[None].float() / 255
    sal = saliency_map(img, mask=torch.from_numpy(ph.fov)[None, None].float())[0, 0].numpy()
    from scipy import ndimage

    background = ph.fov & ~ndimage.binary_dilation(ph.vessels, iterations=3)
    background &= ndimage.binary_erosion(ph.fov, iterations=12)  # away from the FOV rim
    ratio = sal[ph.vessels & ph.fov].mean() / sal[background].mean()
    assert np.isfinite(ratio) and ratio > 2.0, ratio


def test_gaussian_kernels_are_built_once_per_device_and_dtype():
    """The saliency map asks for 17 kernels per call: they are cached (no host build + copy per step)."""
    from retina_sr.losses.saliency import _cached_kernel, gaussian_kernel1d

    a = gaussian_kernel1d(2.0, 1, torch.float32, torch.device("cpu"))
    assert gaussian_kernel1d(2.0, 1, torch.float32, "cpu") is a
    assert gaussian_kernel1d(2.0, 1, torch.float64) is not a  # another dtype: another entry
    assert gaussian_kernel1d(2.0, 1, torch.float64).dtype == torch.float64
    torch.testing.assert_close(a.double(), gaussian_kernel1d(2.0, 1, torch.float64), rtol=1e-6, atol=1e-7)
    _cached_kernel.cache_clear()
    img = torch.rand(1, 3, 32, 32)
    saliency_map(img)
    built = _cached_kernel.cache_info().misses
    saliency_map(img)
    info = _cached_kernel.cache_info()
    assert built > 0 and info.misses == built and info.hits >= built  # the second map built nothing
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel1d(0.0)
