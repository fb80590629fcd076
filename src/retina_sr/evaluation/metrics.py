"""Image-quality and segmentation-overlap metrics, all restricted to a field-of-view (FOV) mask.

Conventions (stated in every report):

* Images are RGB ``uint8`` (H, W, 3); metrics are computed in float64 on the 0..255 scale.
* **PSNR** (``psnr``) is ``10 log10(255^2 / MSE)`` with the MSE averaged over the FOV pixels (and over
  the channels for RGB). ``psnr_y`` uses the luminance Y of ITU-R BT.601 as in MATLAB's ``rgb2ycbcr``
  (``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with RGB in [0, 1], i.e. the [16, 235] range),
  unrounded, with peak 255 -- the convention of the super-resolution literature (e.g. Lai et al.,
  "Deep Laplacian Pyramid Networks for Fast and Accurate Super-Resolution", CVPR 2017) and the same
  number :func:`skimage.metrics.peak_signal_noise_ratio` gives on ``skimage.color.rgb2ycbcr(..)[..., 0]``
  with ``data_range=255``. No border shave: the mask does that (the evaluation passes the retina region,
  the FOV eroded by 2 % of the side, the same region as the vessel scores: the aperture's edge is a
  step of ~190 grey levels whose error would otherwise dominate the MSE).
* **SSIM** (``ssim``) is Wang et al. (IEEE TIP 2004): Gaussian window sigma 1.5 (11x11, truncate 3.5),
  population covariances, K1 = 0.01, K2 = 0.03, L = 255. The SSIM map is averaged over the FOV mask
  eroded by the window radius, so every window lies inside the FOV; with a full mask this equals
  :func:`skimage.metrics.structural_similarity` (which crops the same radius). RGB SSIM is the mean of
  the per-channel values.
* **Dice** and **clDice** (Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular
  Structure Segmentation", CVPR 2021) compare binary masks; skeletons are
  :func:`skimage.morphology.skeletonize`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    import torch

__all__ = [
    "rgb_to_y",
    "Y_WEIGHTS",
    "psnr",
    "psnr_pt",
    "ssim",
    "ssim_map",
    "dice",
    "cldice",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5 -> an 11x11 window, as scipy.ndimage does


#: BT.601 weights of R, G, B (in [0, 1]) in the luminance Y on the [16, 235] scale (MATLAB ``rgb2ycbcr``)
Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luminance on the [16, 235] scale (MATLAB ``rgb2ycbcr``), float64 (H, W).

    ``img`` is RGB ``uint8`` (or float on the 0..255 scale), channels last.
    """
    img = _check_rgb(img, "img")
    x = img.astype(np.float64) / 255.0
    return 16.0 + Y_WEIGHTS[0] * x[..., 0] + Y_WEIGHTS[1] * x[..., 1] + Y_WEIGHTS[2] * x[..., 2]


def _check_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected an RGB image (H, W, 3), got shape {img.shape}")
    return img


def _mask_for(shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(shape[:2], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape[:2]):
        raise ValueError(f"mask shape {mask.shape} does not match the image shape {shape[:2]}")
    if not mask.any():
        raise ValueError("the FOV mask is empty: no pixel to compare")
    return mask


def _prepare(a: np.ndarray, b: np.ndarray, channel: str) -> tuple[np.ndarray, np.ndarray]:
    a = _check_rgb(a, "output")
    b = _check_rgb(b, "reference")
    if a.shape != b.shape:
        raise ValueError(f"output shape {a.shape} differs from reference shape {b.shape}")
    if channel == "y":
        return rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    if channel == "rgb":
        return a.astype(np.float64), b.astype(np.float64)
    raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")


def psnr(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, channel: str = "y") -> float:
    """Peak signal-to-noise ratio (dB, peak 255) of ``output`` vs ``reference`` inside ``mask``.

    ``channel``: ``"y"`` (BT.601 luminance) or ``"rgb"`` (MSE over the three channels).
    Identical images give ``inf``.
    """
    a, b = _prepare(output, reference, channel)
    m = _mask_for(a.shape, mask)
    mse = float(np.mean((a[m] - b[m]) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def psnr_pt(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10, mask: torch.Tensor | None = None,
            channel: str = "rgb") -> torch.Tensor:
    """:func:`psnr`'s batch form for training (torch): per-image PSNR in dB of float (N, 3, H, W) images in
    [0, 1], shape ``(N,)``. ``channel="rgb"``: peak 1, MSE over all channels; ``"y"``: :func:`rgb_to_y`'s
    luminance with peak 255, the evaluation's ``psnr_y``. ``mask`` (N, H, W) bool: the MSE over its pixels
    only (an image with an empty mask gets NaN)."""
    import torch

    d = pred.float() - target.float()
    if channel == "y":
        w = torch.tensor(Y_WEIGHTS, dtype=d.dtype, device=d.device).view(1, 3, 1, 1)
        d, peak = (d * w).sum(1, keepdim=True), 255.0
    elif channel == "rgb":
        peak = 1.0
    else:
        raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")
    sq = d.square()
    if mask is None:
        mse = sq.flatten(1).mean(1)
    else:
        if mask.shape != (d.shape[0], *d.shape[2:]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the images' (N, H, W) "
                             f"{(d.shape[0], *d.shape[2:])}")
        m = mask[:, None].to(sq.dtype)
        n = m.flatten(1).sum(1) * sq.shape[1]
        mse = torch.where(n > 0, (sq * m).flatten(1).sum(1) / n.clamp_min(1), torch.full_like(n, float("nan")))
    return 10.0 * (peak**2 / mse.clamp_min(eps)).log10()


def ssim_map(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """The SSIM map of two single-channel float images (Wang et al. 2004, Gaussian window)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    k = 2 * _SSIM_RADIUS + 1

    def f(z: np.ndarray) -> np.ndarray:
        # the sampled, normalised Gaussian of scipy.ndimage.gaussian_filter(sigma, truncate, mode="reflect")
        # (cv2's BORDER_REFLECT is scipy's "reflect"), in float64, ~5x faster
        return cv2.GaussianBlur(z, (k, k), SSIM_SIGMA, sigmaY=SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    ux, uy = f(x), f(y)
    vx = f(x * x) - ux * ux
    vy = f(y * y) - uy * uy
    vxy = f(x * y) - ux * uy
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, channel: str = "y") -> float:
    """Mean SSIM inside ``mask`` eroded by the window radius (see the module conventions)."""
    a, b = _prepare(output, reference, channel)
    m = _mask_for(a.shape, mask)
    inner = ndi.binary_erosion(m, structure=np.ones((2 * _SSIM_RADIUS + 1,) * 2, bool), border_value=0)
    if not inner.any():
        raise ValueError(
            f"the FOV mask has no pixel at least {_SSIM_RADIUS} px away from its border: the image is too small for SSIM"
        )
    vals = [float(ssim_map(a[..., c], b[..., c])[inner].mean()) for c in range(a.shape[2])]
    return float(np.mean(vals))


def _binary(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask, got shape {m.shape}")
    return m.astype(bool)



def _masked_pair(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Binarise ``pred`` and ``target`` (same shape) and restrict both to ``mask``."""
    p, t = _binary(pred, "pred"), _binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    if mask is not None:
        m = _mask_for(p.shape, mask)
        p, t = p & m, t & m
    return p, t

def dice(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` inside ``mask``; two empty masks agree perfectly (1.0)."""
    p, t = _masked_pair(pred, target, mask)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / denom)


def cldice(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    pred_skeleton: np.ndarray | None = None,
    target_skeleton: np.ndarray | None = None,
) -> float:
    """Centreline Dice (Shit et al., CVPR 2021).

    ``Tprec = |S(P) ∩ T| / |S(P)|`` (how much of the predicted centreline lies in the target),
    ``Tsens = |S(T) ∩ P| / |S(T)|`` (how much of the target centreline is covered), and
    ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``. Skeletons ``S`` are computed with
    :func:`skimage.morphology.skeletonize` unless given (to reuse the reference's skeleton).
    Two empty masks give 1.0; one empty mask gives 0.0.
    """
    from skimage.morphology import skeletonize

    p, t = _masked_pair(pred, target, mask)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    sp = skeletonize(p) if pred_skeleton is None else (_binary(pred_skeleton, "pred_skeleton") & p)
    st = skeletonize(t) if target_skeleton is None else (_binary(target_skeleton, "target_skeleton") & t)
    tprec = float(np.logical_and(sp, t).sum() / max(int(sp.sum()), 1))
    tsens = float(np.logical_and(st, p).sum() / max(int(st.sum()), 1))
    if tprec + tsens == 0:
        return 0.0
    return 2.0 * tprec * tsens / (tprec + tsens)
