"""Validation during training: PSNR per zoom on ``val.npy`` and a comparison grid image.

PSNR (peak 1.0, :func:`retina_sr.evaluation.metrics.psnr_pt`) is computed per patch on the model's last
output clamped to [0, 1], against the HR patch, over the whole patch, and averaged over patches; the reported ``mean`` is the mean over
zooms (the model selection criterion of the trainer).
"""

from __future__ import annotations

from contextlib import nullcontext

import cv2
import numpy as np
import torch
from torch import nn

from ..config import levels_for_zoom
from ..evaluation.metrics import psnr_pt
from ..models.tensors import to_tensor
from .data import PatchSet

__all__ = ["validate", "val_grid", "autocast"]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op on CPU (CPU training stays in fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict(model: nn.Module, lr: torch.Tensor, zoom: int, amp: bool = False) -> torch.Tensor:
    """The model's output for zoom ``zoom`` (``n_up = log2(zoom)``), clamped to [0, 1], in fp32."""
    with autocast(lr.device, amp):
        out = model(lr, n_up=levels_for_zoom(zoom))[-1]
    return out.float().clamp_(0.0, 1.0)


@torch.no_grad()
def validate(model: nn.Module, val: PatchSet, scales: list[int], device: torch.device, batch_size: int = 16,
             amp: bool = False, channels_last: bool = False) -> dict[str, float]:
    """``{"x1": dB, "x2": dB, ..., "mean": dB}`` over every patch of ``val``."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for s in scales:
            values = []
            for i in range(0, len(val), batch_size):
                lr = to_tensor(val.lr[s][i : i + batch_size], device, channels_last)
                hr = to_tensor(val.hr[i : i + batch_size], device)
                values.append(psnr_pt(predict(model, lr, s, amp), hr).cpu())
            out[f"x{s}"] = float(torch.cat(values).mean())
    finally:
        model.train(was_training)
    out["mean"] = float(np.mean([out[f"x{s}"] for s in scales]))
    return out


@torch.no_grad()
def val_grid(model: nn.Module, val: PatchSet, scales: list[int], device: torch.device, index: int = 0,
             amp: bool = False) -> np.ndarray:
    """RGB uint8 grid, one row per zoom: LR (nearest-upscaled) | bicubic | model output | HR."""
    was_training = model.training
    model.eval()
    hr = val.hr[index]
    size = hr.shape[0]
    rows = []
    try:
        for s in scales:
            lr = val.lr[s][index]
            near = cv2.resize(lr, (size, size), interpolation=cv2.INTER_NEAREST)
            bic = cv2.resize(lr, (size, size), interpolation=cv2.INTER_CUBIC)
            pred = predict(model, to_tensor(lr[None], device), s, amp)[0]
            out = (pred.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            sep = np.full((size, 2, 3), 255, np.uint8)
            rows.append(np.concatenate([near, sep, bic, sep, out, sep, hr], axis=1))
    finally:
        model.train(was_training)
    hsep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = [rows[0]]
    for r in rows[1:]:
        grid += [hsep, r]
    return np.concatenate(grid, axis=0)
