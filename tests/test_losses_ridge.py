"""The vessel-ridge loss responds to dark lines, is zero for identical images and gives gradients."""

from __future__ import annotations

import numpy as np
import torch

from retina_sr.losses.ridge import RidgeLoss, _bank, ridge_response


def _line_image(width: float = 1.5, contrast: float = 0.3, size: int = 48) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    d = np.abs(xx - size / 2)
    img = 0.6 - contrast * np.exp(-(d**2) / (2 * width**2))  # a dark vertical vessel on a bright fundus
    return torch.from_numpy(np.repeat(img[None, None], 3, axis=1)).float()


def test_dark_line_gives_a_ridge_and_flat_image_none():
    sig = (0.7, 1.4, 2.8)
    ks = _bank(sig)
    line = ridge_response(_line_image()[:, 1:2], ks, sig)
    flat = ridge_response(torch.full((1, 1, 48, 48), 0.5), ks, sig)
    assert float(flat.abs().max()) < 1e-4
    centre, far = line[0, :, 24, 24], line[0, :, 24, 5]
    assert (centre > 10 * far + 1e-4).all()
    # a bright line (not a vessel) gives no dark-ridge response at its centre
    bright = ridge_response(1.2 - _line_image()[:, 1:2], ks, sig)
    assert float(bright[0, :, 24, 24].max()) < 1e-4


def test_loss_is_small_for_equal_images_and_grows_when_the_vessel_fades():
    loss = RidgeLoss()
    hr = _line_image()
    faded = _line_image(contrast=0.1)
    blurred = _line_image(width=3.0, contrast=0.15)
    l0, l1, l2 = float(loss(hr, hr)), float(loss(faded, hr)), float(loss(blurred, hr))
    assert l0 < 1.1e-3 and l1 > 3 * l0 and l2 > 3 * l0


def test_gradient_restores_contrast():
    loss = RidgeLoss((1.4,))
    hr = _line_image()
    x = _line_image(contrast=0.1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    start = float(loss(x, hr).detach())
    for _ in range(30):
        opt.zero_grad()
        loss(x, hr).backward()
        opt.step()
    assert float(loss(x, hr).detach()) < 0.5 * start
