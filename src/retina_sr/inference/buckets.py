"""What the model sees: the region to enhance plus context, padded to a fixed bucket size.

A compiled graph (``torch.compile`` with ``dynamic=False``, a CUDA graph) serves one input shape.
A digital zoom changes the region's size with every zoom step, and panning near the image edge
used to clip the context, so every frame could bring a new shape and a new compilation. Here the
model input is the region plus ``context`` pixels on each side, rounded up to a multiple of
``bucket`` pixels in each dimension; pixels outside the image are replicated from its edge
(``ReplicationPad``, what SR inference scripts use for their mod-padding) instead of being clipped.
So the shape depends only on the region's size bucket, never on its position, and a pan or a small
zoom change reuses the graph. The output is cropped back to the region.

Without a bucket (eager PyTorch, ONNX Runtime: any shape is as fast) the context is clipped at the
image edge as before, and a whole image is processed as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Window", "bucket_size", "plan_window", "crop_window"]


def bucket_size(n: int, bucket: int) -> int:
    """``n`` rounded up to a multiple of ``bucket``.

    >>> bucket_size(270, 64), bucket_size(256, 64)
    (320, 256)
    """
    if bucket < 1:
        raise ValueError(f"bucket must be >= 1, got {bucket}")
    return max(bucket, math.ceil(n / bucket) * bucket)


@dataclass(frozen=True)
class Window:
    """The model input in image coordinates and where the region sits inside it (input pixels)."""

    x0: int  # left column of the model input (negative, or past the image: replicated edge)
    y0: int
    width: int  # model input size
    height: int
    ox: int  # the region's offset inside the model input
    oy: int
    w: int  # the region's size
    h: int

    @property
    def padded(self) -> bool:
        """True when part of the window lies outside the image (filled by edge replication)."""
        return self.x0 < 0 or self.y0 < 0


def _axis(start: int, size: int, length: int, context: int, bucket: int | None) -> tuple[int, int, int]:
    """(window start, window size, region offset) along one axis."""
    if bucket is None:
        lo, hi = max(0, start - context), min(length, start + size + context)
        return lo, hi - lo, start - lo
    need = size + 2 * context
    total = bucket_size(need, bucket)
    lo = start - context - (total - need) // 2
    return lo, total, start - lo


def plan_window(
    region: tuple[int, int, int, int],
    image_size: tuple[int, int],
    context: int,
    bucket: int | None,
) -> Window:
    """The model input for ``region = (x, y, w, h)`` of an image of ``image_size = (width, height)``.

    ``context`` pixels around the region are included (pass 0 for a whole image, whose edges are
    real edges); with ``bucket`` the input size is rounded up to multiples of it and positioned
    independently of the image edges.
    """
    x, y, w, h = region
    width, height = image_size
    x0, tw, ox = _axis(x, w, width, context, bucket)
    y0, th, oy = _axis(y, h, height, context, bucket)
    return Window(x0, y0, tw, th, ox, oy, w, h)


def _indices(start: int, size: int, length: int) -> slice | torch.Tensor:
    if start >= 0 and start + size <= length:
        return slice(start, start + size)
    return torch.arange(start, start + size).clamp_(0, length - 1)  # replicate the edge


def crop_window(data: torch.Tensor, win: Window, hwc: bool) -> torch.Tensor:
    """The pixels of ``win`` from ``data`` ((H, W, C) when ``hwc``, else (1, C, H, W)), any dtype,
    with edge replication outside the image. Inside the image this is a view (no copy)."""
    hdim = 0 if hwc else 2
    length_y, length_x = data.shape[hdim], data.shape[hdim + 1]
    rows = _indices(win.y0, win.height, length_y)
    cols = _indices(win.x0, win.width, length_x)
    if isinstance(rows, torch.Tensor):
        data = data.index_select(hdim, rows.to(data.device))
        rows = slice(None)
    if isinstance(cols, torch.Tensor):
        data = data.index_select(hdim + 1, cols.to(data.device))
        cols = slice(None)
    return data[rows, cols] if hwc else data[:, :, rows, cols]
