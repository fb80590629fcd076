"""The model's input: 8-bit RGB images as float NCHW tensors in [0, 1] (the one conversion)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_tensor", "uint8_to_float"]


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu", channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1] on ``device``.

    On CUDA the uint8 batch goes through pinned memory (asynchronous copy) and is converted there.
    ``channels_last`` gives the channels-last memory format (a single image's permuted view already
    has it), else a contiguous NCHW tensor.

    >>> to_tensor(np.full((4, 5, 3), 255, np.uint8)).shape
    torch.Size([1, 3, 4, 5])
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"to_tensor: expected uint8 (H, W, 3) or (N, H, W, 3), got {images.dtype} {images.shape}")
    device = torch.device(device)
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.dim() == 3:
        t = t[None]
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return uint8_to_float(t, channels_last)


def uint8_to_float(t: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` tensor (on any device) -> float32 ``(N, 3, H, W)`` in [0, 1] there."""
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"uint8_to_float: expected uint8 (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    t = t.permute(0, 3, 1, 2).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
