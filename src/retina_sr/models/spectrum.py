"""Period-2 (Nyquist) spectral energy of a model's output or residual: a training-side artifact probe.

(The evaluation's per-image ``checkerboard`` column is :func:`retina_sr.evaluation.artifacts.checkerboard_score`,
the periodic energy at every upsampling period relative to the HR image.)

Transposed convolutions with stride 2 whose kernel taps differ between output parities produce
a period-2 "checkerboard" pattern (Odena, Dumoulin, Olah, "Deconvolution and Checkerboard
Artifacts", Distill 2016). Such a pattern lives exactly on the Nyquist row ``ky = H/2`` and column
``kx = W/2`` of the 2-D DFT, where every linear interpolator of a 2x upsampling (nearest, bilinear,
bicubic: their kernels vanish at the Nyquist frequency) puts (almost) no energy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["nyquist_score", "nyquist_energy_fraction", "periodic_bins"]


def _as_nchw(img: Tensor | np.ndarray) -> Tensor:
    """Tensors are (H, W), (C, H, W) or (N, C, H, W); numpy arrays (H, W), (H, W, C) or (N, H, W, C)."""
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img)).to(torch.float64)
        if t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3:
            t = t.permute(2, 0, 1)[None]
        elif t.dim() == 4:
            t = t.permute(0, 3, 1, 2)
        else:
            raise ValueError(f"nyquist_energy_fraction: array of shape {img.shape} is not (H,W), (H,W,C) or (N,H,W,C)")
        return t
    if not isinstance(img, Tensor):
        raise TypeError(f"nyquist_energy_fraction: expected a torch.Tensor or numpy array, got {type(img).__name__}")
    t = img.detach().to(torch.float64)
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    elif t.dim() != 4:
        raise ValueError(f"nyquist_energy_fraction: tensor of shape {tuple(img.shape)} is not (H,W), (C,H,W) or (N,C,H,W)")
    return t


def nyquist_energy_fraction(img: Tensor | np.ndarray) -> Tensor:
    """Per-image fraction (N,) of the non-DC spectral energy on the Nyquist rows and columns.

    The per-channel mean is removed first; for odd sizes the two bins closest to Nyquist are used.
    An image without any non-DC energy (constant) scores 0.
    """
    t = _as_nchw(img)
    h, w = t.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"nyquist_energy_fraction: image of {h}x{w} pixels is too small (need at least 2x2)")
    t = t - t.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(t).abs().square().sum(dim=1)  # (N, H, W), summed over channels
    rows = sorted({h // 2, (h + 1) // 2 % h})
    cols = sorted({w // 2, (w + 1) // 2 % w})
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[rows, :] = True
    mask[:, cols] = True
    total = power.sum(dim=(-2, -1))
    nyq = power[:, mask].sum(dim=-1)
    return torch.where(total > 0, nyq / total.clamp_min(1e-30), torch.zeros_like(total))


def nyquist_score(img_or_batch: Tensor | np.ndarray, reference: Tensor | np.ndarray | None = None) -> float:
    """Nyquist score in [0, 1]: mean over images of the Nyquist-row/column energy fraction.

    ``img_or_batch``: a torch tensor (H, W), (C, H, W) or (N, C, H, W), or a numpy array (H, W),
    (H, W, C) or (N, H, W, C) (the project's NHWC layout; any dtype). With ``reference`` (same
    shape, e.g. the HR image) the score is computed on the error ``img - reference``, i.e. the
    share of the reconstruction error that is period-2 artifact. Higher = more checkerboard;
    natural images and smooth interpolations score near 0, a pure checkerboard scores 1.
    """
    x = _as_nchw(img_or_batch)
    if reference is not None:
        r = _as_nchw(reference)
        if r.shape != x.shape:
            raise ValueError(f"nyquist_score: reference shape {tuple(r.shape)} != image shape {tuple(x.shape)}")
        x = x - r
    return float(nyquist_energy_fraction(x).mean())


def periodic_bins(h: int, w: int, period: int, radius: int = 1) -> np.ndarray:
    """(H, W) bool mask of the DFT bins within ``radius`` of the frequencies ``(ky/period, kx/period)``,
    ``kx, ky in 0..period-1``, not both 0 (period >= 2; the bin nearest to each frequency, exact when the
    side is divisible by the period): where an upsampler's periodic artifacts live. Shared by the
    evaluation's checkerboard score and the periodic-artifact loss."""
    period = max(int(period), 2)
    if h < period or w < period:
        raise ValueError(f"a {h}x{w} image is smaller than the artifact period {period}")
    mask = np.zeros((h, w), dtype=bool)
    for ky in range(period):
        for kx in range(period):
            if kx == 0 and ky == 0:
                continue
            cy, cx = round(ky * h / period) % h, round(kx * w / period) % w
            rows = [(cy + d) % h for d in range(-radius, radius + 1)]
            cols = [(cx + d) % w for d in range(-radius, radius + 1)]
            mask[np.ix_(rows, cols)] = True
    return mask
