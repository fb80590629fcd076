"""Checkerboard artifacts: deconv shows period-2 energy at init, resize-conv and sub-pixel+ICNR do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from retina_sr.config import ModelConfig
from retina_sr.models import build_model, icnr_, nyquist_score

torch.set_num_threads(1)


def _inputs(h: int = 24) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, h), indexing="ij")
    smooth = torch.stack([0.6 + 0.2 * torch.sin(3 * xx), 0.3 + 0.1 * yy, 0.1 + 0.05 * xx * yy])[None]
    return {"constant": torch.full((1, 3, h, h), 0.5), "smooth": smooth}


def _residual_score(upsample: str, x: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(features=8, depth=2, upsample=upsample, image_branch="learned"), levels=1).eval()
    with torch.no_grad():
        y0, y1 = model(x)
    residual = y1 - F.interpolate(y0, scale_factor=2, mode="bilinear", align_corners=False)
    return nyquist_score(residual[..., 4:-4, 4:-4])  # ignore zero-padding effects at the border


@pytest.mark.parametrize("kind", ["constant", "smooth"])
@pytest.mark.parametrize("seed", [0, 1])
def test_deconv_checkerboard_at_init(kind, seed):
    x = _inputs()[kind]
    deconv = _residual_score("deconv", x, seed)
    resize = _residual_score("resize_conv", x, seed)
    subpix = _residual_score("subpixel", x, seed)
    assert deconv > 0.5, deconv
    assert resize < 0.1 and subpix < 0.1, (resize, subpix)
    assert deconv > 10 * max(resize, subpix)


def test_score_on_known_patterns():
    h = w = 16
    yy, xx = np.mgrid[0:h, 0:w]
    checker = ((yy + xx) % 2).astype(np.float32)
    stripes = (xx % 2).astype(np.float32)
    ramp = (xx / w + yy / h).astype(np.float32)
    assert nyquist_score(torch.from_numpy(checker)) == pytest.approx(1.0)
    assert nyquist_score(torch.from_numpy(stripes)) == pytest.approx(1.0)
    assert nyquist_score(torch.zeros(3, h, w)) == 0.0  # constant: no non-DC energy
    assert nyquist_score(torch.from_numpy(ramp)) < 0.05
    # mixing a checkerboard into a ramp raises the score
    assert nyquist_score(torch.from_numpy(ramp + 0.2 * checker)) > 5 * nyquist_score(torch.from_numpy(ramp))


def test_score_layouts_and_reference():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)  # NHWC uint8, the project's array layout
    t = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    assert nyquist_score(img) == pytest.approx(nyquist_score(t))
    assert nyquist_score(img[0]) == pytest.approx(nyquist_score(t[0]))
    hr = np.full((12, 10, 3), 100, np.uint8)
    out = hr.astype(np.int16) + 20 * ((np.indices((12, 10)).sum(0) % 2)[..., None])
    assert nyquist_score(out, reference=hr) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference shape"):
        nyquist_score(img, reference=img[0])
    with pytest.raises(ValueError, match="not"):
        nyquist_score(torch.zeros(1, 1, 1, 4, 4))


def test_nearest_and_bilinear_upsampling_have_no_nyquist_energy():
    torch.manual_seed(0)
    x = F.avg_pool2d(torch.rand(1, 3, 32, 32), 4)  # smooth-ish content
    for mode in ("nearest", "bilinear"):
        up = F.interpolate(x, scale_factor=2, mode=mode)
        assert nyquist_score(up[..., 2:-2, 2:-2]) < 0.05


def test_icnr_is_nearest_then_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 8, 3, padding=1, bias=False)
    base = torch.randn(2, 2, 3, 3)
    icnr_(conv.weight, 2, init=base)
    x = torch.rand(1, 2, 5, 5)
    sub = F.pixel_shuffle(conv(x), 2)
    # each 2x2 output block holds the same value = conv at low resolution, i.e. nearest upsampling
    low = F.conv2d(x, base, padding=1)
    torch.testing.assert_close(sub, F.interpolate(low, scale_factor=2, mode="nearest"))
    with pytest.raises(ValueError, match="divisible"):
        icnr_(torch.empty(6, 2, 3, 3), 2)
