"""Classic interpolation baselines (OpenCV): nearest, bicubic and Lanczos upsampling.

Bicubic is Keys' cubic convolution with ``a = -0.75`` (OpenCV's ``INTER_CUBIC``); Lanczos uses an
8x8 neighbourhood (``INTER_LANCZOS4``, Duchon 1979). At zoom 1 the baselines are the identity, which
the evaluation reports once as the ``input`` row (the degraded image itself).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["BASELINES", "upsample"]

BASELINES: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def upsample(lr: np.ndarray, scale: int, method: str) -> np.ndarray:
    """Upsample an RGB ``uint8`` image by the integer ``scale`` with ``method`` (a :data:`BASELINES` key)."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}: choose one of {sorted(BASELINES)}")
    lr = np.asarray(lr)
    if lr.ndim != 3 or lr.dtype != np.uint8:
        raise ValueError(f"baseline input must be an RGB uint8 image (H, W, 3), got {lr.dtype} {lr.shape}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return lr.copy()
    h, w = lr.shape[:2]
    return cv2.resize(lr, (w * scale, h * scale), interpolation=BASELINES[method])
