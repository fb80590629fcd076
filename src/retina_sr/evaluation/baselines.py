"""Baselines: classic interpolation (OpenCV nearest, bicubic, Lanczos) and the peers a user would pick
instead of our model (OpenCV ``dnn_superres`` LapSRN / ESPCN / FSRCNN with their published weights).

Bicubic is Keys' cubic convolution with ``a = -0.75`` (OpenCV's ``INTER_CUBIC``); Lanczos uses an
8x8 neighbourhood (``INTER_LANCZOS4``, Duchon 1979). At zoom 1 the baselines are the identity, which
the evaluation reports once as the ``input`` row (the degraded image itself).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["BASELINES", "upsample", "PEERS", "PeerModel", "load_peers"]

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


#: OpenCV ``dnn_superres`` peers: row name -> (algorithm, file name pattern). Trained on natural images
#: (DIV2K / General100, bicubic degradation) by their authors; x2 and x4 files.
PEERS: dict[str, tuple[str, str]] = {
    "opencv_lapsrn": ("lapsrn", "LapSRN_x{s}.pb"),
    "opencv_espcn": ("espcn", "ESPCN_x{s}.pb"),
    "opencv_fsrcnn": ("fsrcnn", "FSRCNN_x{s}.pb"),
}


class PeerModel:
    """One OpenCV ``dnn_superres`` model at one scale (RGB uint8 in, RGB uint8 out, CPU)."""

    def __init__(self, name: str, path, scale: int) -> None:
        algo, _ = PEERS[name]
        self.name, self.path, self.scale = name, str(path), int(scale)
        self._sr = cv2.dnn_superres.DnnSuperResImpl_create()  # type: ignore[attr-defined]
        self._sr.readModel(self.path)
        self._sr.setModel(algo, self.scale)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        out = self._sr.upsample(cv2.cvtColor(np.ascontiguousarray(lr), cv2.COLOR_RGB2BGR))
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def load_peers(peers_dir, scales) -> tuple[dict[tuple[str, int], PeerModel], list[str]]:
    """The peers found in ``peers_dir`` for each zoom of ``scales``, and one reason per peer skipped.

    ``peers_dir=None`` means peers are off (no reason reported). A missing folder, a missing file for a
    zoom or an OpenCV build without ``dnn_superres`` (opencv-python instead of opencv-contrib-python)
    skips that peer with the reason, never silently.
    """
    from pathlib import Path

    if peers_dir is None:
        return {}, []
    d = Path(peers_dir)
    if not d.is_dir():
        return {}, [f"peers skipped: folder {d} not found (evaluate.peers_dir; the OpenCV dnn_superres .pb files)"]
    if not hasattr(cv2, "dnn_superres"):
        return {}, ["peers skipped: this OpenCV has no dnn_superres module (install opencv-contrib-python-headless)"]
    found, skipped = {}, []
    for name, (_, pattern) in PEERS.items():
        for s in scales:
            if s == 1:
                continue
            f = d / pattern.format(s=s)
            if not f.is_file():
                skipped.append(f"{name} x{s} skipped: {f} not found")
                continue
            found[(name, int(s))] = PeerModel(name, f, s)
    return found, skipped
