"""The zoom logic every back end shares (:class:`BaseEnhancer`), device names, output resampling.

One frame goes through these steps; only the model call differs between back ends::

    image (uint8 numpy, ...) --as_source-->  Source (same memory, same dtype)
      --plan_window/crop_window-->  region + receptive-field context, padded to a bucket (uint8)
      --HostStaging.upload-->       on the device (pinned buffer, non_blocking, on CUDA)
      --Source.to_float-->          float32 [0, 1]
      --_forward (tiled above the memory budget)-->  the 2**n_up output
      --crop, resample-->           the region at round(zoom * size) (F.interpolate, antialiased)
      --from_tensor-->              clamped, quantised to uint8 on the device, copied to the host

A zoom ``z`` in ``[1, max_zoom]`` runs ``n_up = ceil(log2 z)`` pyramid levels (LapSRN, Lai et al.
2017); when ``z`` is not a power of two the ``2**n_up`` output is resampled down with antialiased
bicubic interpolation (``F.interpolate(..., antialias=True)``, i.e. the filter widened by the
shrink factor, as PIL does), on the device that computed it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import levels_for_zoom
from .buckets import crop_window, plan_window
from .image import InputError, Source, as_source, check_zoom, from_tensor
from .receptive import tile_overlap
from .staging import HostStaging
from .tiling import auto_tile, run_tiled

__all__ = ["BaseEnhancer", "DeviceError", "resolve_device", "resample", "DEFAULT_CPU_BUDGET"]

Roi = tuple[int, int, int, int]

#: activation memory above which a CPU run is tiled automatically (bytes)
DEFAULT_CPU_BUDGET = 2 * 2**30


class DeviceError(ValueError):
    """A device name that is malformed or names hardware that is not there."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked against the
    visible GPUs; :class:`DeviceError` says what exists otherwise."""
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
            raise DeviceError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N (--device)")
        dev = torch.device(text)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(f"device {device} requested but no CUDA device is visible: use --device auto or "
                              "--device cpu (device='auto'/'cpu')")
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {device}: only {n} CUDA device(s) are visible (cuda:0 .. cuda:{n - 1}); "
                              "pick one of those with --device")
    return dev


def default_memory_budget(device: torch.device) -> int:
    """Half the free GPU memory on CUDA, :data:`DEFAULT_CPU_BUDGET` elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    return DEFAULT_CPU_BUDGET


def resample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, C, H, W) float tensor to ``size`` = (width, height) where it is (antialiased
    bicubic; only ever a shrink, from the ``2**n_up`` output to a zoom between powers of two)."""
    w, h = size
    if t.shape[-1] == w and t.shape[-2] == h:
        return t
    return F.interpolate(t, size=(h, w), mode="bicubic", antialias=True, align_corners=False)


def _parse_roi(roi: Any, width: int, height: int) -> Roi:
    try:
        x, y, w, h = (int(v) for v in roi)
    except (TypeError, ValueError):
        raise InputError(f"roi must be (x, y, width, height) integers, got {roi!r}") from None
    if w < 1 or h < 1:
        raise InputError(f"roi {roi!r} has an empty size: width and height must be >= 1")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise InputError(f"roi {roi!r} (x, y, w, h) is not inside the {width}x{height} image")
    return x, y, w, h


def _target(w: int, h: int, z: float, s: int, out_size: Any, what: str) -> tuple[int, int]:
    """The output size: ``round(z * size)`` or a checked ``out_size`` (at most the x``s`` output)."""
    if out_size is None:
        return max(1, round(w * z)), max(1, round(h * z))
    try:
        target = (int(out_size[0]), int(out_size[1]))
    except (TypeError, ValueError, IndexError):
        raise InputError(f"out_size must be (width, height), got {out_size!r}") from None
    if target[0] < 1 or target[1] < 1 or target[0] > w * s or target[1] > h * s:
        raise InputError(f"out_size {target} must be positive and at most the x{s} model output "
                         f"{(w * s, h * s)} of this {what}: raise zoom or lower out_size")
    return target


def _pad_source(src: Source, pad_x: int, pad_y: int) -> Source:
    """``src`` with a black border (as outside a fundus) making it ``pad_x``/``pad_y`` larger."""
    lx, ly = pad_x // 2, pad_y // 2
    if src.hwc:
        data = F.pad(src.data, (0, 0, lx, pad_x - lx, ly, pad_y - ly))
    else:
        data = F.pad(src.data, (lx, pad_x - lx, ly, pad_y - ly))
    return Source(data, src.hwc, src.scale)


class BaseEnhancer:
    """Zoom logic shared by the PyTorch and ONNX Runtime back ends (module doc).

    Subclasses implement :meth:`_forward` (a (1, 3, h, w) float tensor in [0, 1] -> the model's
    ``2**n_up`` output) and :meth:`receptive_radius`, and set :attr:`max_zoom`.
    """

    max_zoom: int = 1
    device: torch.device = torch.device("cpu")
    #: model inputs are padded to multiples of this many pixels (None: any shape; see ``buckets``)
    bucket: int | None = None
    #: activation bytes above which an image is tiled automatically (None: never)
    memory_budget: int | None = DEFAULT_CPU_BUDGET
    #: bytes per activation value (2 under bf16/fp16 autocast) for the memory estimate
    activation_bytes: int = 4
    #: pixels of real image context around a region of interest (None: the receptive-field radius)
    roi_context: int | None = None
    #: the first call of a shape compiles (a video pipeline warms up before it starts its clock)
    needs_warmup: bool = False
    meta: dict[str, Any] = {}

    def _forward(self, x: torch.Tensor, n_up: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_n_up(self, n_up: int) -> None:
        """Hook for back ends that support only some pyramid depths (ONNX exports)."""

    def receptive_radius(self, n_up: int) -> int:
        """Receptive-field radius (input pixels) of the ``2**n_up`` output; unknown models: 16."""
        return 16

    @property
    def features(self) -> int:
        """Feature channels of the model (for the activation-memory estimate)."""
        return int(self.meta.get("model", {}).get("features", 64))

    # ---------------------------------------------------------------------------------------------
    def enhance(
        self,
        image: np.ndarray | torch.Tensor,
        zoom: float,
        roi: Roi | None = None,
        out_size: tuple[int, int] | None = None,
        tile: int | None = None,
        overlap: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Enhance ``image`` (or its region ``roi``) at ``zoom`` in ``[1, max_zoom]``.

        Args:
            image: RGB (H, W, 3) uint8/uint16/float in [0, 1], RGBA (alpha dropped, warned),
                grayscale (H, W) or (H, W, 1) (replicated to RGB, returned gray), or a float tensor
                (3, H, W) / (1, 3, H, W) in [0, 1]. See :mod:`retina_sr.inference.image`.
            zoom: any real factor from 1 to :attr:`max_zoom` (1.5, 3 and 6 work too).
            roi: optional ``(x, y, width, height)`` region in input pixels; only it is enhanced
                (with :attr:`roi_context` pixels of surrounding image as context).
            out_size: optional output ``(width, height)``; default ``round(zoom * size)`` of the
                image or ROI. Must not exceed the ``2**ceil(log2 zoom)`` model output.
            tile: tile side in input pixels (None: automatic above :attr:`memory_budget`).
            overlap: tile overlap in input pixels (None: 4x the receptive-field radius, which
                reproduces untiled output; see ``tiling``).
            progress: optional ``(done, total)`` callback per tile.

        Returns:
            The enhanced image in the input's dtype and layout (numpy in -> numpy out; tensor in ->
            tensor out on the same device).
        """
        src, spec = as_source(image)
        y = self._enhance_source(src, zoom, roi, out_size, tile, overlap, progress)
        return from_tensor(y, spec)

    def window(
        self,
        image: np.ndarray | torch.Tensor,
        center: tuple[float, float],
        zoom: float,
        display_size: tuple[int, int],
        tile: int | None = None,
        overlap: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """The digital zoom window: the display-size view of ``image`` around ``center`` at ``zoom``.

        The source region that maps onto a ``display_size = (width, height)`` display at ``zoom`` is
        ``ceil(width / zoom) x ceil(height / zoom)`` pixels centred on ``center = (x, y)``; it is
        shifted to stay inside the image (and the image is padded with black where it is smaller
        than the region, as outside a fundus), enhanced, and returned at exactly ``display_size``.
        """
        src, spec = as_source(image)
        z = check_zoom(zoom, self.max_zoom)
        try:
            dw, dh = (int(v) for v in display_size)
            cx, cy = (float(v) for v in center)
        except (TypeError, ValueError):
            raise InputError(f"display_size must be (width, height) and center (x, y), got "
                             f"{display_size!r} and {center!r}") from None
        if dw < 1 or dh < 1:
            raise InputError(f"display_size {display_size!r} must be positive")
        sw, sh = math.ceil(dw / z - 1e-9), math.ceil(dh / z - 1e-9)
        width, height = src.size
        pad_x, pad_y = max(0, sw - width), max(0, sh - height)
        if pad_x or pad_y:
            src = _pad_source(src, pad_x, pad_y)
            cx, cy = cx + pad_x // 2, cy + pad_y // 2
            width, height = src.size
        x0 = min(max(0, round(cx - sw / 2)), width - sw)
        y0 = min(max(0, round(cy - sh / 2)), height - sh)
        y = self._enhance_source(src, z, (x0, y0, sw, sh), (dw, dh), tile, overlap, None)
        return from_tensor(y, spec)

    def output_size(self, image_size: tuple[int, int], zoom: float, roi: Roi | None = None,
                    out_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """``(width, height)`` that :meth:`enhance` returns for an image of ``image_size``."""
        z = check_zoom(zoom, self.max_zoom)
        width, height = (int(v) for v in image_size)
        _, _, w, h = _parse_roi(roi, width, height) if roi is not None else (0, 0, width, height)
        return _target(w, h, z, 2 ** levels_for_zoom(z), out_size, "ROI" if roi else "image")

    def warmup(self, image_size: tuple[int, int], zooms: list[float], roi: Roi | None = None,
               display_size: tuple[int, int] | None = None, calls: int = 1) -> None:
        """Run each zoom ``calls`` times on a black frame of ``image_size`` through :meth:`enhance`
        (or :meth:`window` with ``display_size``), so compilation and CUDA-graph capture happen now
        rather than in the first real frame. Panning does not change the shapes (``buckets``)."""
        w, h = (int(v) for v in image_size)
        frame = np.zeros((h, w, 3), np.uint8)
        for z in zooms:
            for _ in range(int(calls)):
                if display_size is not None:
                    self.window(frame, (w / 2, h / 2), z, display_size)
                else:
                    self.enhance(frame, z, roi=roi)

    # ---------------------------------------------------------------------------------------------
    def _enhance_source(
        self,
        src: Source,
        zoom: float,
        roi: Roi | None,
        out_size: tuple[int, int] | None,
        tile: int | None,
        overlap: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> torch.Tensor:
        z = check_zoom(zoom, self.max_zoom)
        n_up = levels_for_zoom(z)
        self._check_n_up(n_up)
        s = 2**n_up
        width, height = src.size
        region = _parse_roi(roi, width, height) if roi is not None else (0, 0, width, height)
        target = _target(region[2], region[3], z, s, out_size, "ROI" if roi else "image")
        context = 0 if roi is None else (self.receptive_radius(n_up) if self.roi_context is None
                                         else max(0, int(self.roi_context)))
        win = plan_window(region, (width, height), context, self.bucket)
        x = src.to_float(self._upload(crop_window(src.data, win, src.hwc)))
        out = self._infer(x, n_up, tile, overlap, progress)
        out = out[:, :, win.oy * s:(win.oy + win.h) * s, win.ox * s:(win.ox + win.w) * s]
        return resample(out, target)

    def _upload(self, patch: torch.Tensor) -> torch.Tensor:
        """A host crop onto :attr:`device` through reused pinned buffers (CUDA); else as it is."""
        if patch.device == self.device or self.device.type == "cpu":
            return patch
        if getattr(self, "_staging", None) is None:
            self._staging = HostStaging(self.device)
        return self._staging.upload(patch)

    def _infer(self, x: torch.Tensor, n_up: int, tile: int | None, overlap: int | None,
               progress: Callable[[int, int], None] | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        ov = tile_overlap(self.receptive_radius(n_up)) if overlap is None else int(overlap)
        if tile is None:
            tile = auto_tile(w, h, n_up, self.features, self.memory_budget, ov, self.bucket or 16,
                             self.activation_bytes)
        elif overlap is None and ov >= tile:
            raise InputError(f"tile {tile} is too small for this model's default overlap {ov} (4x its receptive-"
                             f"field radius); use a tile of at least {2 * ov} pixels or set the overlap")
        if tile is not None and tile < max(h, w):
            return run_tiled(lambda a: self._forward(a, n_up), x, 2**n_up, int(tile), ov, progress)
        return self._forward(x, n_up)
