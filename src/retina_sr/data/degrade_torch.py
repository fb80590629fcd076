"""The degradation model of :func:`retina_sr.data.patches.degrade` as batched torch ops (any device).

Training on a GPU degrades each step's batch where the batch already is (``train.loop.degrade_on``),
instead of a Python loop of OpenCV calls on the host. The same model, step for step:

1. Gaussian blur with OpenCV's kernel for float images (``ksize = round(8 sigma + 1) | 1`` taps of
   ``exp(-x^2 / 2 sigma^2)``, normalised) and its ``BORDER_REFLECT`` border (``fedcba|abcdef``), one
   sigma per image (a batch mixes sigmas: each image's kernel is zero-padded to the batch's widest);
2. ``INTER_AREA`` downscaling by an integer zoom = the mean of each ``s x s`` block;
3. optional Poisson noise, additive Gaussian noise, quantisation to 8 bit (``x * 255 + 0.5``, clipped,
   truncated).

Only the noise realisation differs from the host path (torch's generator instead of NumPy's); the
blur, downscaling and quantisation agree with OpenCV to float rounding (``tests/test_data_degrade_torch.py``).
JPEG has no torch op here: a run with ``data.patches.jpeg_quality`` degrades on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["cv_gaussian_ksize", "gaussian_kernels", "reflect_pad", "blur", "degrade_batch", "dihedral_batch"]


def cv_gaussian_ksize(sigma: float) -> int:
    """OpenCV's kernel size for ``GaussianBlur(..., (0, 0), sigma)`` on float images."""
    return int(round(sigma * 8 + 1)) | 1


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``(N, K)`` for ``sigma`` ``(N,)`` (> 0), each with OpenCV's taps,
    zero-padded to the widest one's size ``K``."""
    sizes = [cv_gaussian_ksize(s) for s in sigma.detach().to(torch.float64).cpu().tolist()]
    k = max(sizes)
    x = torch.arange(k, dtype=torch.float64, device=sigma.device) - k // 2
    s = sigma.to(torch.float64)[:, None]
    g = torch.exp(-(x[None] ** 2) / (2 * s**2))
    half = torch.tensor([n // 2 for n in sizes], device=sigma.device, dtype=torch.float64)[:, None]
    g = g * (x[None].abs() <= half)  # each image's own OpenCV kernel width
    return (g / g.sum(1, keepdim=True)).to(torch.float32)


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by ``pad`` with OpenCV's ``BORDER_REFLECT`` (``fedcba|abcdef``), any ``pad``."""
    h, w = x.shape[-2:]
    return x.index_select(-2, _reflect_index(h, pad, x.device)).index_select(-1, _reflect_index(w, pad, x.device))


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of float ``(N, C, H, W)`` with one ``sigma`` per image (0 = no blur; a host
    tensor, so that building the kernels needs no device sync)."""
    n, c, h, w = x.shape
    if sigma.shape != (n,):
        raise ValueError(f"blur: sigma must have shape ({n},), got {tuple(sigma.shape)}")
    sigma = sigma.detach().float().cpu()  # the kernels are built on the host (no device sync), then sent
    on = sigma > 0
    if not bool(on.any()):
        return x
    k = gaussian_kernels(torch.where(on, sigma, torch.ones_like(sigma)))
    k = torch.where(on[:, None], k, F.one_hot(torch.tensor(k.shape[1] // 2), k.shape[1]).to(k))
    k = k.to(x.device, non_blocking=True)
    r = k.shape[1] // 2
    xp = reflect_pad(x.float(), r).reshape(1, n * c, h + 2 * r, w + 2 * r)
    kk = k.repeat_interleave(c, 0)
    y = F.conv2d(xp, kk[:, None, None, :], groups=n * c)  # along W
    y = F.conv2d(y, kk[:, None, :, None], groups=n * c)  # along H
    return y.reshape(n, c, h, w)


def degrade_batch(hr: torch.Tensor, zoom: int, sigma: torch.Tensor, noise_std: torch.Tensor,
                  generator: torch.Generator | None = None, poisson_peak: float | None = None,
                  skip: int = 0) -> torch.Tensor:
    """uint8 HR ``(N, H, W, 3)`` -> uint8 LR ``(N, H/zoom, W/zoom, 3)`` (module docstring).

    ``sigma`` ``(N,)`` (host tensors, like ``noise_std``: drawn on the host, no device sync) is the zoom-1 blur (applied: ``sigma * zoom`` for zoom > 1), ``noise_std`` ``(N,)``
    the Gaussian std on the 0..1 scale. The noise comes from ``generator``; ``skip`` images' worth of
    noise is drawn first and dropped (a data-parallel shard at batch offset ``skip`` draws what one
    process draws for those positions).
    """
    if hr.dtype != torch.uint8 or hr.dim() != 4 or hr.shape[-1] != 3:
        raise ValueError(f"degrade_batch expects uint8 (N, H, W, 3), got {hr.dtype} {tuple(hr.shape)}")
    n, h, w, _ = hr.shape
    if zoom < 1 or h % zoom or w % zoom:
        raise ValueError(f"crops {w}x{h} are not divisible by zoom {zoom}")
    x = hr.permute(0, 3, 1, 2).float().div_(255.0)
    x = blur(x, sigma.detach().float().cpu() * (zoom if zoom > 1 else 1))
    if zoom > 1:
        x = F.avg_pool2d(x, zoom)
    if poisson_peak is not None:
        x = torch.poisson(x.clamp(0, 1) * poisson_peak, generator=generator) / poisson_peak
    std_host = noise_std.detach().float().cpu()
    if bool((std_host > 0).any()):
        std = std_host.to(x.device, non_blocking=True)
        shape = (skip + n, *x.shape[1:])
        noise = torch.randn(shape, generator=generator, device=x.device, dtype=torch.float32)[skip:]
        x = x + noise * std[:, None, None, None]
    lr = (x * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
    return lr.permute(0, 2, 3, 1).contiguous()


def dihedral_batch(x: torch.Tensor, k: Sequence[int], flip: Sequence[bool]) -> torch.Tensor:
    """Per-image dihedral transform of ``(N, H, W, ...)`` (square H = W): flip W first when ``flip``, then
    ``rot90`` by ``k`` (NumPy's ``np.rot90(a[:, ::-1] if flip else a, k)`` per image)."""
    out = x.clone()
    kk, ff = [int(a) for a in k], [bool(b) for b in flip]
    for kf in {(int(a), bool(b)) for a, b in zip(kk, ff)}:
        sel = torch.tensor([i for i, (a, b) in enumerate(zip(kk, ff)) if (int(a), bool(b)) == kf], device=x.device)
        t = x.index_select(0, sel)
        if kf[1]:
            t = t.flip(2)
        if kf[0]:
            t = torch.rot90(t, kf[0], dims=(1, 2))
        out.index_copy_(0, sel, t)
    return out
