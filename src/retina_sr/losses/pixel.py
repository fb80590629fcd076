"""Charbonnier (robust L1) pixel losses, per image and summed over the Laplacian pyramid.

Reference: Lai et al., "Deep Laplacian Pyramid Networks for Fast and Accurate Super-Resolution",
CVPR 2017, Eq. (2): ``rho(x) = sqrt(x^2 + eps^2)`` summed over pyramid levels, each level compared
with the ground truth downscaled to its size. (The paper uses eps = 1e-3.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["charbonnier", "downscale_to", "pyramid_charbonnier"]


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3, weight: Tensor | None = None) -> Tensor:
    """Mean Charbonnier penalty ``sqrt((pred - target)^2 + eps^2)`` (a scalar).

    ``weight`` (broadcastable to ``pred``, e.g. a (N, 1, H, W) saliency map) turns the mean into a
    weighted mean ``sum(w * rho) / sum(w)`` over the broadcast elements.
    """
    if pred.shape != target.shape:
        raise ValueError(f"charbonnier: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if eps <= 0:
        raise ValueError(f"charbonnier: eps must be > 0, got {eps}")
    rho = torch.sqrt((pred - target).square() + eps * eps)
    if weight is None:
        return rho.mean()
    w = weight.expand_as(rho)
    return (w * rho).sum() / w.sum().clamp_min(1e-12)


def downscale_to(hr: Tensor, size: tuple[int, int]) -> Tensor:
    """Area (average-pool) downscaling of ``hr`` (N, C, H, W) to ``size``; identity at the same size.

    The size must divide the HR size exactly (pyramid levels are powers of two of each other).
    """
    h, w = hr.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (th, tw) == (h, w):
        return hr
    if th > h or tw > w or h % th or w % tw or h // th != w // tw:
        raise ValueError(f"cannot area-downscale a {h}x{w} target to {th}x{tw}: the output must be the HR size "
                         "divided by the same integer factor in both directions")
    k = h // th
    return F.avg_pool2d(hr, kernel_size=k, stride=k)


def pyramid_charbonnier(outputs: Sequence[Tensor], hr: Tensor, eps: float = 1e-3) -> Tensor:
    """Sum over pyramid levels of the Charbonnier loss against ``hr`` area-downscaled to each level.

    ``outputs`` is the list a :class:`~retina_sr.models.LapSRN` returns (``[level0, x2, ...]``);
    ``hr`` must have the size of the largest output (or a multiple of each output's size).
    """
    if len(outputs) == 0:
        raise ValueError("pyramid_charbonnier: no outputs given")
    total = hr.new_zeros(())
    for out in outputs:
        total = total + charbonnier(out, downscale_to(hr, (int(out.shape[-2]), int(out.shape[-1]))), eps)
    return total
