"""Upsampling-artifact score: spectral energy at the periodic frequencies an upsampler leaves.

Transposed convolutions with stride 2 (LapSRN's upsampling, Lai et al. CVPR 2017) produce
checkerboard patterns of period 2 per 2x level (Odena, Dumoulin & Olah, "Deconvolution and
Checkerboard Artifacts", Distill 2016). After a zoom ``s`` pyramid the periods are 2, 4, ..., s in
output pixels, i.e. peaks in the 2-D spectrum at frequencies ``(kx/s, ky/s)`` cycles/pixel,
``kx, ky in 0..s-1``, not both 0. Zoom 1 (no upsampling) uses period 2 (the Nyquist frequency).

:func:`checkerboard_score` is the energy of the output's luminance spectrum in those bins divided by the
same energy of the HR image: 1 = as much periodic energy as the real image, > 1 = artifacts added,
< 1 = the output is smoother than HR there (typical of interpolation).
"""

from __future__ import annotations

import numpy as np

from ..models.spectrum import periodic_bins
from .metrics import rgb_to_y

__all__ = ["periodic_energy", "checkerboard_score"]


def _spectrum(img: np.ndarray) -> np.ndarray:
    y = rgb_to_y(img) if img.ndim == 3 else np.asarray(img, dtype=np.float64)
    y = y - y.mean()
    h, w = y.shape
    win = np.outer(np.hanning(h), np.hanning(w))  # suppress the edge discontinuity of the DFT
    return np.abs(np.fft.fft2(y * win)) ** 2


def periodic_energy(img: np.ndarray, scale: int, radius: int = 1) -> float:
    """Spectral energy (Hann-windowed luminance) within ``radius`` bins of the zoom's periodic peaks
    (:func:`retina_sr.models.spectrum.periodic_bins`; zoom 1 uses period 2)."""
    p = np.abs(_spectrum(img))
    h, w = p.shape
    try:
        mask = periodic_bins(h, w, scale, radius)
    except ValueError:
        raise ValueError(f"image {h}x{w} is smaller than the artifact period {max(int(scale), 2)}") from None
    return float(p[mask].sum())


def checkerboard_score(output: np.ndarray, reference: np.ndarray, scale: int, radius: int = 1) -> float:
    """Periodic-frequency energy of ``output`` relative to ``reference`` (see module docstring)."""
    if output.shape != reference.shape:
        raise ValueError(f"output shape {output.shape} differs from reference shape {reference.shape}")
    ref = periodic_energy(reference, scale, radius)
    out = periodic_energy(output, scale, radius)
    if ref <= 0:
        return float("nan") if out <= 0 else float("inf")
    return out / ref
