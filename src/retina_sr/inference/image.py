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

:func:`as_source` wraps an input without converting it (a uint8 frame stays uint8, sharing the
caller's memory), so that only the region the model needs is cut out, uploaded and converted to
float, on the device (:mod:`~retina_sr.inference.base`); :func:`from_tensor` clamps and quantises the
result where it was computed and copies only the uint8 pixels back.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import levels_for_zoom  # re-exported: base, onnx, fastpath and the package import it from here

__all__ = ["InputError", "ZoomError", "NonFiniteOutputError", "InputSpec", "Source", "as_source", "from_tensor",
           "to_dtype", "check_zoom", "levels_for_zoom"]


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


@dataclass(frozen=True)
class Source:
    """An input image kept in its own dtype until the region the model needs has been cut out.

    ``data`` is an (H, W, 3) tensor sharing memory with a numpy input (uint8, or float32 for
    uint16/float images), or a (1, 3, H, W) float tensor input on its device; ``data / scale`` is the
    image in [0, 1]. Cropping first means only the region is copied, uploaded and converted.
    """

    data: torch.Tensor
    hwc: bool
    scale: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        h, w = (self.data.shape[0], self.data.shape[1]) if self.hwc else self.data.shape[-2:]
        return int(w), int(h)

    def to_float(self, patch: torch.Tensor) -> torch.Tensor:
        """A crop of :attr:`data` (already on its device) as a float32 (1, 3, h, w) tensor in [0, 1].

        An (h, w, 3) crop is permuted, not copied: the result has channels-last strides.
        """
        t = patch.permute(2, 0, 1)[None] if self.hwc else patch
        t = t.float()
        return t.div_(self.scale) if self.scale != 1.0 else t


def _tensor_source(t: torch.Tensor) -> tuple[Source, InputSpec]:
    if not ((t.ndim == 3 and t.shape[0] == 3) or (t.ndim == 4 and t.shape[:2] == (1, 3))):
        raise InputError(f"tensor input must be (3, H, W) or (1, 3, H, W) RGB in [0, 1], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InputError(f"tensor input must be floating point in [0, 1], got {t.dtype}")
    if t.shape[-1] < 1 or t.shape[-2] < 1:
        raise InputError(f"empty tensor image of shape {tuple(t.shape)}")
    _float_range_check(float(t.min()), float(t.max()), "tensor input")
    spec = InputSpec("torch", t.dtype, batched=t.ndim == 4, device=t.device)
    return Source(t.reshape(1, 3, *t.shape[-2:]).float(), hwc=False, scale=1.0), spec


def _rgb_view(image: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """(H, W, 3) view of a numpy image, gray flag, keep-channel-axis flag (shape checks, warnings)."""
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
        warnings.warn("RGBA input: the alpha channel is dropped; the output is RGB", stacklevel=4)
        a = a[:, :, :3]
    elif channels == 1:
        warnings.warn("grayscale input: replicated to 3 channels for the colour model; the output is "
                      "converted back to grayscale (channel mean)", stacklevel=4)
        a = np.broadcast_to(a, (*a.shape[:2], 3))
    elif channels != 3:
        raise InputError(f"image has {channels} channels; RGB (3), RGBA (4) or grayscale (1) is needed")
    return a, gray, keep_axis


def as_source(image: np.ndarray | torch.Tensor) -> tuple[Source, InputSpec]:
    """Validate a supported image (module doc) and wrap it as a :class:`Source` plus its
    :class:`InputSpec`; uint8 stays uint8 (no copy), uint16 and float become float32."""
    if isinstance(image, torch.Tensor):
        return _tensor_source(image)
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    a, gray, keep_axis = _rgb_view(image)
    if not a.dtype.isnative:  # e.g. '>u2' from a big-endian 16-bit TIFF: same values, native order
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == np.uint8:
        scale = 255.0
    elif a.dtype == np.uint16:
        a, scale = a.astype(np.float32), 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        a, scale = a.astype(np.float32, copy=False), 1.0
        _float_range_check(float(a.min()), float(a.max()), "image")
    else:
        raise InputError(f"image dtype {a.dtype} is not supported: use uint8, uint16 or float in [0, 1]")
    spec = InputSpec("numpy", image.dtype.newbyteorder("="), gray=gray, keep_channel_axis=keep_axis)
    if a.strides[2] == 0 or not a.flags.writeable:  # broadcast gray / read-only: torch needs real memory
        a = np.ascontiguousarray(a)
    return Source(torch.from_numpy(a), hwc=True, scale=scale), spec


def from_tensor(t: torch.Tensor, spec: InputSpec) -> np.ndarray | torch.Tensor:
    """Give a (1, 3, H, W) float result back in the caller's form (dtype, layout, gray, device).

    For a numpy result ``t`` (the enhancer's own output) is modified in place, and the clamp, the
    channel mean of a gray input and the uint8 quantisation run where ``t`` is (the GPU on the fast
    path), so only uint8 pixels are copied to the host.
    """
    if spec.kind == "torch":
        t = t.clamp(0.0, 1.0).to(device=spec.device, dtype=spec.dtype)
        return t if spec.batched else t[0]
    with torch.inference_mode():  # in-place on the model's (inference-mode) output
        return _to_numpy(t, spec)


def _to_numpy(t: torch.Tensor, spec: InputSpec) -> np.ndarray:
    if torch.isnan(t.sum()):  # NaN would survive the clamp and quantise to black (one reduction, no copy)
        raise NonFiniteOutputError("the model's output holds NaN values (its weights are NaN/inf, or the "
                                   "bf16/fp16 fast path overflowed); use another checkpoint or run without --fast")
    if np.dtype(spec.dtype) == np.uint8 and t.device.type == "cpu" and not spec.gray:
        # on the host OpenCV scales, rounds, saturates (> 1 -> 255) and interleaves in about one pass per channel:
        # 4 ms for a 1920x1080 frame against torch's 12 ms on 2 cores; negatives are zeroed first (convertScaleAbs
        # takes the absolute value)
        import cv2

        chans = [cv2.convertScaleAbs(cv2.max(np.ascontiguousarray(c), 0.0), alpha=255.0) for c in t[0].float().numpy()]
        return cv2.merge(chans)
    t = t.clamp_(0.0, 1.0)
    if spec.gray:
        t = t.mean(dim=1, keepdim=True)
    # CHW -> HWC where the tensor is (on a GPU nearly free; on the host torch's copy is ~3x faster than
    # NumPy's strided one), so the host receives, or keeps, one contiguous image: a host-side transpose of a
    # 3840x2160 frame took longer than the model on an H200
    if np.dtype(spec.dtype) == np.uint8:
        q = t.mul_(255.0).add_(0.5).to(torch.uint8)[0].permute(1, 2, 0).contiguous()  # the rounding of to_dtype
        a = q.cpu().numpy()
    else:
        a = to_dtype(t[0].permute(1, 2, 0).float().contiguous().cpu().numpy(), spec.dtype)
    if spec.gray and not spec.keep_channel_axis:
        a = a[:, :, 0]
    return np.ascontiguousarray(a)


def to_dtype(a: np.ndarray, dtype: Any) -> np.ndarray:
    """float [0, 1] -> ``dtype`` (uint8/uint16 rounded, float kept as float32 unless float64 asked)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.ascontiguousarray((a * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    if dtype == np.uint16:
        return np.ascontiguousarray((a * 65535.0 + 0.5).clip(0, 65535).astype(np.uint16))
    return np.ascontiguousarray(a.astype(dtype if dtype == np.float64 else np.float32))


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
