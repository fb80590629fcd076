"""Input/output conversion for inference: any supported image -> float RGB in [0, 1] and back.

Supported inputs (numpy, H x W [x C]):

* ``uint8`` (0..255), ``uint16`` (0..65535) or floating point in [0, 1];
* 3 channels (RGB) as is; 4 channels (RGBA): the alpha channel is dropped with a warning (the model
  enhances colour only); 1 channel or 2-D (grayscale): replicated to 3 channels with a warning and the
  result is returned as grayscale again (channel mean), so a gray image stays gray;
* ``torch.Tensor`` float in [0, 1], shaped (3, H, W) or (1, 3, H, W); the result is a tensor of the
  same layout on the same device.

Anything else (2 or >4 channels, other dtypes, float values outside [0, 1], empty images) is an
:class:`InputError` that says what to do.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["InputError", "ZoomError", "NonFiniteOutputError", "InputSpec", "to_tensor", "from_tensor", "check_zoom",
           "levels_for_zoom"]


class InputError(ValueError):
    """An input image has an unsupported shape, dtype or value range."""


class ZoomError(ValueError):
    """A zoom factor is outside what the model (or the exported ONNX graph) can produce."""


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN values (corrupt weights, or a reduced-precision overflow)."""


@dataclass(frozen=True)
class InputSpec:
    """How the caller's image looked, so the output can be given back in the same form."""

    kind: str  # "numpy" | "torch"
    dtype: Any  # numpy dtype (numpy) or torch dtype (torch)
    gray: bool = False  # 2-D or single-channel input: output converted back to one channel
    keep_channel_axis: bool = False  # gray given as (H, W, 1)
    batched: bool = False  # torch (1, 3, H, W)
    device: Any = None  # torch device of a tensor input


def _float_range_check(lo: float, hi: float, what: str) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{what} contains NaN or infinite values")
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise InputError(
            f"{what} has float values in [{lo:.3g}, {hi:.3g}]; float images must be in [0, 1] "
            "(divide 8-bit data by 255, or pass the uint8 array as is)"
        )


def to_tensor(image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, InputSpec]:
    """Convert a supported image to a float32 (1, 3, H, W) tensor in [0, 1] plus its :class:`InputSpec`.

    Numpy inputs give a CPU tensor; tensor inputs stay on their device.
    """
    if isinstance(image, torch.Tensor):
        t = image
        batched = t.ndim == 4
        if not ((t.ndim == 3 and t.shape[0] == 3) or (t.ndim == 4 and t.shape[:2] == (1, 3))):
            raise InputError(
                f"tensor input must be (3, H, W) or (1, 3, H, W) RGB in [0, 1], got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise InputError(f"tensor input must be floating point in [0, 1], got {t.dtype}")
        if t.shape[-1] < 1 or t.shape[-2] < 1:
            raise InputError(f"empty tensor image of shape {tuple(t.shape)}")
        _float_range_check(float(t.min()), float(t.max()), "tensor input")
        spec = InputSpec("torch", t.dtype, batched=batched, device=t.device)
        t = t.reshape(1, 3, *t.shape[-2:]).float()
        return t, spec
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    a = image
    gray = keep_axis = False
    if a.ndim == 2:
        gray = True
        a = a[:, :, None]
    elif a.ndim != 3:
        raise InputError(f"image must be H x W (gray) or H x W x C, got shape {a.shape}")
    channels = a.shape[2]
    if channels == 1:
        gray = True
        keep_axis = image.ndim == 3
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"empty image of shape {image.shape}")
    if channels == 4:
        warnings.warn("RGBA input: the alpha channel is dropped; the output is RGB", stacklevel=3)
        a = a[:, :, :3]
    elif channels == 1:
        warnings.warn("grayscale input: replicated to 3 channels for the colour model; the output is "
                      "converted back to grayscale (channel mean)", stacklevel=3)
        a = np.repeat(a, 3, axis=2)
    elif channels != 3:
        raise InputError(f"image has {channels} channels; RGB (3), RGBA (4) or grayscale (1) is needed")
    if not a.dtype.isnative:  # e.g. '>u2' from a big-endian 16-bit TIFF: same values, native order
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        _float_range_check(float(f.min()), float(f.max()), "image")
    else:
        raise InputError(f"image dtype {a.dtype} is not supported: use uint8, uint16 or float in [0, 1]")
    spec = InputSpec("numpy", a.dtype, gray=gray, keep_channel_axis=keep_axis)
    t = torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))[None]
    return t, spec


def from_tensor(t: torch.Tensor, spec: InputSpec) -> np.ndarray | torch.Tensor:
    """Give a (1, 3, H, W) float result back in the caller's form (dtype, layout, gray, device)."""
    t = t.clamp(0.0, 1.0)
    if spec.kind == "torch":
        t = t.to(device=spec.device, dtype=spec.dtype)
        return t if spec.batched else t[0]
    a = t[0].detach().float().cpu().numpy().transpose(1, 2, 0)
    if not np.isfinite(a.sum()):  # NaN survives the clamp and would quantise to black
        raise NonFiniteOutputError("the model's output holds NaN values (its weights are NaN/inf, or the "
                                   "bf16/fp16 fast path overflowed); use another checkpoint or run without --fast")
    if spec.gray:
        a = a.mean(axis=2, keepdims=spec.keep_channel_axis)
    return to_dtype(a, spec.dtype)


def to_dtype(a: np.ndarray, dtype: Any) -> np.ndarray:
    """float [0, 1] -> ``dtype`` (uint8/uint16 rounded, float kept as float32 unless float64 asked)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.ascontiguousarray((a * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    if dtype == np.uint16:
        return np.ascontiguousarray((a * 65535.0 + 0.5).clip(0, 65535).astype(np.uint16))
    return np.ascontiguousarray(a.astype(dtype if dtype == np.float64 else np.float32))


def levels_for_zoom(zoom: float) -> int:
    """Pyramid levels (``n_up``) needed for ``zoom``: the next power of two at or above it.

    Zoom 1 -> 0 (the same-size deblur/denoise level), 1.5 and 2 -> 1, 3 and 4 -> 2, 8 -> 3.
    """
    return max(0, math.ceil(math.log2(zoom) - 1e-9))


def check_zoom(zoom: float, max_zoom: int, source: str = "the model") -> float:
    """Validate ``zoom`` against ``[1, max_zoom]`` with a message that says what is allowed."""
    try:
        z = float(zoom)
    except (TypeError, ValueError):
        raise ZoomError(f"zoom must be a number, got {zoom!r}") from None
    if not math.isfinite(z) or z < 1.0:
        raise ZoomError(f"zoom {zoom} is below 1: the model only enlarges (zoom 1 = same-size deblur/denoise)")
    if z > max_zoom + 1e-9:
        raise ZoomError(f"zoom {zoom} is above {source}'s maximum zoom {max_zoom}: use a zoom in [1, {max_zoom}]")
    return z
