"""Validation during training: PSNR per zoom on ``val.npy`` and a comparison grid image.

PSNR is the evaluation's own: on the luminance Y (peak 255, :func:`retina_sr.evaluation.metrics.psnr_pt`
with ``channel="y"``) over the retina, the patch's FOV eroded by 2 % of the image side
(:func:`retina_sr.evaluation.vessels.eroded_fov`, the region of every evaluation score), on the model's
last output clamped to [0, 1] against the HR patch, averaged over patches (patches with no retina left
after the erosion are left out; files without FOV masks are scored over the whole patch). Over the whole
patch the aperture's edge (a step of ~190 grey levels in a quarter of the crops) outweighed the retina and
ranked models differently from the held-out evaluation. The reported ``mean`` is the mean over zooms (the
model selection criterion of the trainer).
"""

from __future__ import annotations

from contextlib import nullcontext

import cv2
import numpy as np
import torch
from torch import nn

from ..config import levels_for_zoom
from ..evaluation.metrics import psnr_pt
from ..evaluation.vessels import eroded_fov
from ..models.tensors import to_tensor
from .data import PatchSet

__all__ = ["validate", "val_grid", "autocast", "retina_masks"]


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


def retina_masks(val: PatchSet, side: int | None) -> np.ndarray | None:
    """(N, crop, crop) bool: each patch's retina (its FOV eroded as the evaluation erodes an image of
    ``side`` pixels); ``None`` when the patch file has no FOV masks."""
    if val.fov is None:
        return None
    masks = np.stack([eroded_fov(f, side=side, crop=True) for f in val.fov]) if len(val.fov) else val.fov
    if len(masks) and not masks.any():
        raise ValueError(f"{val.path}: no validation patch keeps any retina after the FOV's 2 % erosion: raise "
                         "data.patches.fov_min_fraction or data.patches.crop and rerun the patches stage")
    return masks


@torch.no_grad()
def validate(model: nn.Module, val: PatchSet, scales: list[int], device: torch.device, batch_size: int = 16,
             amp: bool = False, channels_last: bool = False, side: int | None = None,
             masks: np.ndarray | None = None) -> dict[str, float]:
    """``{"x1": dB, "x2": dB, ..., "mean": dB}`` over every patch of ``val`` (see the module docstring);
    ``side``: the preprocessed images' side (``data.size``), which sets the erosion; ``masks``: the
    :func:`retina_masks` of ``val`` when the caller keeps them (computed here otherwise)."""
    was_training = model.training
    model.eval()
    if masks is None:
        masks = retina_masks(val, side)
    out: dict[str, float] = {}
    try:
        for s in scales:
            values = []
            for i in range(0, len(val), batch_size):
                lr = to_tensor(val.lr[s][i : i + batch_size], device, channels_last)
                hr = to_tensor(val.hr[i : i + batch_size], device)
                m = None if masks is None else torch.from_numpy(masks[i : i + batch_size]).to(device)
                values.append(psnr_pt(predict(model, lr, s, amp), hr, mask=m, channel="y").cpu())
            out[f"x{s}"] = float(torch.cat(values).nanmean())  # patches without retina are NaN: left out
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
