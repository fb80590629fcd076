"""The periodic-artifact loss: the evaluation's checkerboard bins, differentiable, scale-free."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retina_sr.evaluation.artifacts import checkerboard_score
from retina_sr.losses.periodic import PeriodicLoss, periodic_mask


def _smooth(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _checker(size: int, period: int) -> torch.Tensor:
    idx = torch.arange(size)
    return (((idx[:, None] // (period // 2)) + (idx[None] // (period // 2))) % 2).float()


def test_mask_holds_the_evaluations_bins():
    m = periodic_mask(16, 16, 4, radius=0)
    assert m.sum() == 15  # (ky, kx) in 0..3 x 0..3 less DC
    assert m[8, 8] and m[4, 0] and m[0, 12] and not m[0, 0] and not m[1, 1]
    # zoom 1 scores period 2, like checkerboard_score
    assert torch.equal(periodic_mask(16, 16, 1), periodic_mask(16, 16, 2))
    with pytest.raises(ValueError, match="smaller than the artifact period"):
        periodic_mask(4, 4, 8)


@pytest.mark.parametrize("zoom,period", [(2, 2), (4, 4), (4, 2)])
def test_loss_is_zero_for_hr_and_grows_with_a_checkerboard(zoom, period):
    loss = PeriodicLoss()
    hr = _smooth()
    base = float(loss(hr, hr, zoom))
    assert base < 1e-3
    weak = float(loss(hr + 0.01 * _checker(64, period), hr, zoom))
    strong = float(loss(hr + 0.05 * _checker(64, period), hr, zoom))
    assert strong > 3 * weak > 3 * base


def test_ranks_outputs_as_the_evaluation_checkerboard_score_does():
    loss = PeriodicLoss()
    hr = _smooth(1, 64, seed=3)
    outs = [hr + a * _checker(64, 2) for a in (0.002, 0.01, 0.04)]
    ours = [float(loss(o, hr, 2)) for o in outs]
    to_np = lambda t: (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255)  # noqa: E731
    theirs = [checkerboard_score(to_np(o), to_np(hr), 2) for o in outs]
    assert np.argsort(ours).tolist() == np.argsort(theirs).tolist() == [0, 1, 2]


def test_gradient_removes_the_checkerboard_and_keeps_the_image():
    loss = PeriodicLoss()
    hr = _smooth(1, 32, seed=1)
    x = (hr + 0.05 * _checker(32, 2)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=3e-3)
    start = float(loss(x.detach(), hr, 2))
    for _ in range(60):
        opt.zero_grad()
        loss(x, hr, 2).backward()
        opt.step()
    assert torch.isfinite(x.grad).all()
    assert float(loss(x.detach(), hr, 2)) < 0.2 * start
    # only the periodic bins are pulled towards HR: the image itself stays (not flattened to a constant)
    assert float((x.detach() - hr).abs().mean()) < 0.05


def test_one_sided_a_smoother_output_costs_nothing_a_grid_does():
    """Only magnitude above HR's is an artifact: a blurred output (less energy in every bin) scores 0, so
    the term never pulls towards a smooth image the way a pixel loss does; a grid on it still scores."""
    loss = PeriodicLoss()
    g = torch.Generator().manual_seed(5)
    hr = (_smooth(2, 64) + 0.05 * torch.rand(2, 3, 64, 64, generator=g)).clamp(0, 1)  # detail at every frequency
    blurred = F.avg_pool2d(F.pad(hr, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert float(loss(blurred, hr, 4)) < 1e-3
    assert float(loss(blurred + 0.03 * _checker(64, 2), hr, 4)) > 0.05
    # the gradient of a smoother-than-HR output is zero: nothing to undo
    x = blurred.clone().requires_grad_(True)
    loss(x, hr, 4).backward()
    assert float(x.grad.abs().max()) < 1e-6


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\)"):
        PeriodicLoss()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), 2)


def test_phase_loss_uses_it_only_when_weighted():
    from retina_sr.training.objectives import LossSpec, PhaseLosses

    hr = _smooth(2, 32)
    outs = [F.interpolate(hr, scale_factor=0.5, mode="area"), hr + 0.05 * _checker(32, 2)]
    off = PhaseLosses(LossSpec(1.0, 1e-3))
    on = PhaseLosses(LossSpec(1.0, 1e-3, periodic_weight=0.5))
    t_off, terms_off = off.generator(outs, hr, zoom=2)
    t_on, terms_on = on.generator(outs, hr, zoom=2)
    assert "periodic" not in terms_off and float(terms_on["periodic"]) > 0.1
    assert float(t_on - t_off) == pytest.approx(0.5 * float(terms_on["periodic"]), rel=1e-5)
    # zoom 1 (same-size deblur): no upsampler, no artifact term
    same = [hr + 0.05 * _checker(32, 2)]
    t1_on, terms1 = on.generator(same, hr, zoom=1)
    assert float(terms1["periodic"]) == 0.0 and float(t1_on) == pytest.approx(float(off.generator(same, hr, zoom=1)[0]))
