"""Handcrafted retinal saliency maps and the saliency-weighted loss.

Mahapatra, Bozorgtabar, Hewavitharanage, Garnavi, "Image Super Resolution Using Generative
Adversarial Networks and Local Saliency Maps for Retinal Image Analysis", MICCAI 2017
(arXiv:1710.04783), and Mahapatra, Bozorgtabar, Garnavi, "Image super-resolution using progressive
generative adversarial networks for medical image analysis", Computerized Medical Imaging and
Graphics 71, 2019: local saliency maps built from handcrafted features define each pixel's
importance and weight the super-resolution loss, so that errors on vessels and lesions count more
than errors on the flat background.

The saliency map here combines three cues, all differentiable torch ops (separable Gaussian
convolutions, no Python loops over pixels):

1. intensity contrast: centre-surround differences across a Gaussian pyramid of the intensity
   (Itti, Koch, Niebur, "A model of saliency-based visual attention for rapid scene analysis",
   IEEE TPAMI 1998), centre levels c in {0, 1, 2}, surround s = c + {2, 3};
2. texture: local gradient energy, the trace of the structure tensor (Gaussian-derivative
   gradients at sigma 1, integrated at sigma 2), square-rooted;
3. vessel curvature: multi-scale Hessian vesselness of the green channel (Frangi, Niessen,
   Vincken, Viergever, "Multiscale vessel enhancement filtering", MICCAI 1998) for dark tubular
   structures (the retinal vessels are darker than the background, i.e. lambda_2 > 0), with
   scale-normalised Hessians (sigma^2 H) and the maximum over scales.

Each cue is min-max normalised per image (Itti's normalisation operator N(.) in its simplest
form), the weighted mean is taken and normalised to [0, 1] again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .pixel import charbonnier

__all__ = [
    "gaussian_kernel1d",
    "gaussian_blur",
    "intensity_contrast",
    "texture_energy",
    "vesselness",
    "saliency_map",
    "SaliencyLoss",
]


def gaussian_kernel1d(sigma: float, order: int = 0, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> Tensor:
    """Sampled 1-D Gaussian (order 0) or its first/second derivative (order 1/2), radius ceil(3 sigma).

    Built once per ``(sigma, order, dtype, device)`` and cached (:func:`_cached_kernel`): the saliency
    map needs 17 kernels per call, and building them on the host plus a blocking ``.to(device)`` every
    training step would stall a GPU. The returned tensor is shared: do not modify it in place."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _cached_kernel(float(sigma), int(order), dtype, dev)


@functools.lru_cache(maxsize=256)
def _cached_kernel(sigma: float, order: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _build_kernel(sigma, order).to(dtype=dtype, device=device)


def _build_kernel(sigma: float, order: int) -> Tensor:
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    if order == 1:
        g = -x / sigma**2 * g
    elif order == 2:
        g = (x**2 / sigma**4 - 1 / sigma**2) * g
        g = g - g.mean()  # exact zero response to constants
    elif order != 0:
        raise ValueError(f"order must be 0, 1 or 2, got {order}")
    return g


def _sep_conv(x: Tensor, ky: Tensor, kx: Tensor) -> Tensor:
    """Depthwise separable convolution of (N, C, H, W) with reflect padding (replicate when too small)."""
    c = x.shape[1]
    ry, rx = ky.numel() // 2, kx.numel() // 2
    h, w = x.shape[-2:]
    mode = "reflect" if (ry < h and rx < w) else "replicate"
    x = F.pad(x, (rx, rx, ry, ry), mode=mode)
    x = F.conv2d(x, kx.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, ky.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of every channel of (N, C, H, W)."""
    g = gaussian_kernel1d(sigma, 0, x.dtype, x.device)
    return _sep_conv(x, g, g)


def _minmax(m: Tensor, eps: float = 1e-8) -> Tensor:
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    return (m - lo) / (hi - lo + eps)


def _check(img: Tensor) -> Tensor:
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"saliency: expected RGB (N, 3, H, W) in [0, 1], got shape {tuple(img.shape)}")
    return img if img.is_floating_point() else img.float()


def intensity_contrast(img: Tensor, centers: Sequence[int] = (0, 1, 2), deltas: Sequence[int] = (2, 3)) -> Tensor:
    """Itti-Koch centre-surround intensity contrast (N, 1, H, W), not normalised.

    A Gaussian pyramid (blur sigma 1, then 2x average pooling) of the mean intensity; each
    ``|P_c - P_s|`` (``s = c + delta``, surround upsampled bilinearly to the centre level) is
    brought to full size and summed. Pairs beyond the pyramid's depth (small images) are skipped.
    """
    img = _check(img)
    inten = img.mean(dim=1, keepdim=True)
    h, w = inten.shape[-2:]
    pyr = [inten]
    while len(pyr) < max(centers) + max(deltas) + 1 and min(pyr[-1].shape[-2:]) >= 8:
        pyr.append(F.avg_pool2d(gaussian_blur(pyr[-1], 1.0), 2, ceil_mode=True))
    out = torch.zeros_like(inten)
    for c in centers:
        for d in deltas:
            s = c + d
            if s >= len(pyr):
                continue
            sur = F.interpolate(pyr[s], size=pyr[c].shape[-2:], mode="bilinear", align_corners=False)
            cs = (pyr[c] - sur).abs()
            out = out + F.interpolate(cs, size=(h, w), mode="bilinear", align_corners=False)
    return out


def texture_energy(img: Tensor, sigma: float = 1.0, rho: float = 2.0, eps: float = 1e-8) -> Tensor:
    """Local gradient energy sqrt(trace of the structure tensor) (N, 1, H, W), not normalised."""
    inten = _check(img).mean(dim=1, keepdim=True)
    g0 = gaussian_kernel1d(sigma, 0, inten.dtype, inten.device)
    g1 = gaussian_kernel1d(sigma, 1, inten.dtype, inten.device)
    gx = _sep_conv(inten, g0, g1)
    gy = _sep_conv(inten, g1, g0)
    energy = gaussian_blur(gx.square() + gy.square(), rho)
    return torch.sqrt(energy + eps)


def vesselness(img: Tensor, sigmas: Sequence[float] = (1.0, 2.0, 3.0), beta: float = 0.5,
               c: float | None = None, dark: bool = True, eps: float = 1e-10) -> Tensor:
    """Frangi vesselness of the green channel (N, 1, H, W) in [0, 1), maximum over ``sigmas``.

    ``V = exp(-Rb^2 / 2 beta^2) * (1 - exp(-S^2 / 2 c^2))`` with ``Rb = lambda_1 / lambda_2``,
    ``S = ||H||_F`` and ``|lambda_1| <= |lambda_2|`` the eigenvalues of the scale-normalised Hessian;
    zero where ``lambda_2`` has the wrong sign (``dark=True``: keep dark vessels, lambda_2 > 0).
    ``c`` defaults to half the per-image maximum of ``S`` (Frangi et al. 1998), taken without
    gradient so that it acts as a constant.
    """
    g = _check(img)[:, 1:2]
    best = None
    for s in sigmas:
        k0 = gaussian_kernel1d(s, 0, g.dtype, g.device)
        k1 = gaussian_kernel1d(s, 1, g.dtype, g.device)
        k2 = gaussian_kernel1d(s, 2, g.dtype, g.device)
        hxx = _sep_conv(g, k0, k2) * s**2
        hyy = _sep_conv(g, k2, k0) * s**2
        hxy = _sep_conv(g, k1, k1) * s**2
        tmp = torch.sqrt((hxx - hyy).square() + 4 * hxy.square() + eps)
        mu1 = 0.5 * (hxx + hyy + tmp)
        mu2 = 0.5 * (hxx + hyy - tmp)
        swap = mu1.abs() > mu2.abs()
        lam2 = torch.where(swap, mu1, mu2)
        lam1 = torch.where(swap, mu2, mu1)
        s2 = lam1.square() + lam2.square()
        if c is None:
            cc = 0.5 * torch.sqrt(s2.detach().amax(dim=(-2, -1), keepdim=True) + eps)
        else:
            cc = torch.as_tensor(c, dtype=g.dtype, device=g.device)
        rb2 = lam1.square() / (lam2.square() + eps)
        v = torch.exp(-rb2 / (2 * beta**2)) * (1 - torch.exp(-s2 / (2 * cc.square() + eps)))
        keep = lam2 > 0 if dark else lam2 < 0
        v = torch.where(keep, v, torch.zeros_like(v))
        best = v if best is None else torch.maximum(best, v)
    assert best is not None
    return best


def saliency_map(img: Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 mask: Tensor | None = None) -> Tensor:
    """Retinal saliency (N, 1, H, W) in [0, 1] of RGB ``img`` (N, 3, H, W) in [0, 1].

    ``weights`` = (intensity contrast, texture, vesselness); each cue is min-max normalised per
    image before the weighted mean. ``mask`` (N, 1, H, W) or (N, H, W), e.g. the field of view,
    zeroes the saliency outside it before the final normalisation (the FOV border is otherwise the
    most contrasted structure of a fundus photograph).
    """
    img = _check(img)
    if img.dtype in (torch.float16, torch.bfloat16):
        img = img.float()
    with torch.autocast(device_type=img.device.type, enabled=False):  # Hessians need full precision
        return _saliency(img, weights, mask)


def _saliency(img: Tensor, weights: tuple[float, float, float], mask: Tensor | None) -> Tensor:
    wsum = float(sum(weights))
    if wsum <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"saliency weights must be >= 0 with a positive sum, got {weights}")
    cues: tuple[Callable[[Tensor], Tensor], ...] = (intensity_contrast, texture_energy, vesselness)
    sal = torch.zeros_like(img[:, :1])
    for w, cue in zip(weights, cues):
        if w > 0:
            sal = sal + w * _minmax(cue(img))
    sal = sal / wsum
    if mask is not None:
        m = mask if mask.dim() == 4 else mask[:, None]
        if m.shape[0] != sal.shape[0] or m.shape[-2:] != sal.shape[-2:]:
            raise ValueError(f"saliency mask shape {tuple(mask.shape)} does not match the image {tuple(img.shape)}")
        sal = sal * m.to(sal.dtype)
    return _minmax(sal)


class SaliencyLoss(nn.Module):
    """Saliency loss after Mahapatra et al. (MICCAI 2017, arXiv:1710.04783; CMIG 2019).

    ``mode="weighted"`` (default, the papers' use: "pixels are weighed according to their
    importance"): the Charbonnier error between prediction and target weighted by the *target's*
    saliency map, ``sum(S_hr * rho(pred - hr)) / sum(S_hr)``, with ``S_hr`` computed without
    gradient. Added to the plain pyramid Charbonnier term it gives salient pixels (vessels, lesion
    edges) up to ``1 + saliency_weight`` times the weight of flat background.

    ``mode="compare"``: Charbonnier distance between the saliency maps of prediction and target
    (gradients flow through the prediction's saliency), i.e. the structures the saliency sees must
    match, whatever their intensities.
    """

    def __init__(self, mode: Literal["weighted", "compare"] = "weighted", eps: float = 1e-3,
                 weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        if mode not in ("weighted", "compare"):
            raise ValueError(f"SaliencyLoss: mode must be 'weighted' or 'compare', got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.weights = weights

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"SaliencyLoss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        with torch.no_grad():
            s_t = saliency_map(target.float(), self.weights, mask)
        if self.mode == "weighted":
            return charbonnier(pred, target, self.eps, weight=s_t.to(pred.dtype))
        s_p = saliency_map(pred.float(), self.weights, mask)
        return charbonnier(s_p, s_t, self.eps)
