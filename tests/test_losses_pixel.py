"""Charbonnier and pyramid Charbonnier."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from retina_sr.config import ModelConfig
from retina_sr.losses import charbonnier, downscale_to, pyramid_charbonnier
from retina_sr.models import build_model

torch.set_num_threads(1)


def test_charbonnier_values():
    a = torch.zeros(1, 1, 2, 2)
    assert float(charbonnier(a, a, eps=1e-3)) == pytest.approx(1e-3)
    b = torch.tensor([0.0, 0.3, -0.4, 1.0]).view(1, 1, 2, 2)
    expected = sum(math.sqrt(v * v + 1e-4) for v in (0.0, 0.3, 0.4, 1.0)) / 4
    assert float(charbonnier(b, a, eps=1e-2)) == pytest.approx(expected, rel=1e-6)
    # weighted mean: all weight on one pixel gives that pixel's penalty
    w = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert float(charbonnier(b, a, eps=1e-2, weight=w)) == pytest.approx(math.sqrt(1 + 1e-4), rel=1e-6)


def test_charbonnier_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        charbonnier(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        charbonnier(torch.zeros(1), torch.zeros(1), eps=0)


def test_downscale_is_area_average():
    hr = torch.arange(16.0).view(1, 1, 4, 4)
    down = downscale_to(hr, (2, 2))
    torch.testing.assert_close(down, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(down, F.interpolate(hr, size=(2, 2), mode="area"))
    assert downscale_to(hr, (4, 4)) is hr
    with pytest.raises(ValueError, match="cannot area-downscale"):
        downscale_to(hr, (3, 3))
    with pytest.raises(ValueError, match="cannot area-downscale"):
        downscale_to(hr, (8, 8))


def test_pyramid_charbonnier_sums_levels():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 16, 16)
    outs = [torch.rand(2, 3, 4, 4), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)]
    expected = sum(charbonnier(o, F.avg_pool2d(hr, 16 // o.shape[-1]), 1e-3) for o in outs)
    torch.testing.assert_close(pyramid_charbonnier(outs, hr, 1e-3), expected)
    # perfect pyramid -> eps per level
    perfect = [F.avg_pool2d(hr, k) if k > 1 else hr for k in (4, 2, 1)]
    assert float(pyramid_charbonnier(perfect, hr, 1e-3)) == pytest.approx(3e-3, rel=1e-4)
    with pytest.raises(ValueError, match="no outputs"):
        pyramid_charbonnier([], hr)


def test_pyramid_loss_trains_lapsrn():
    """A few steps on one batch reduce the pyramid loss (the loss and the model fit together)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(features=8, depth=2, image_branch="learned"), levels=2)  # starts far from the target
    hr = F.avg_pool2d(torch.rand(2, 3, 32, 32), 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    lr = F.avg_pool2d(hr, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = pyramid_charbonnier(model(lr), hr, 1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]
