"""Tiled inference with feathered (raised-cosine) blending for images larger than memory allows.

The input is cut into overlapping tiles (``tile`` pixels, neighbours overlapping by at least
``overlap``), each tile is enhanced on its own and the results are blended. Across each overlap the
weight of a tile is 0 on the outer quarter (next to its edge, where convolutions saw zero padding
instead of image), rises along a raised cosine (Hann half-window) over the middle half and is 1 on
the inner quarter; the two weights of neighbouring tiles sum to one everywhere, so no seam shows.
Image borders keep weight 1. With ``overlap >= 4 x`` the model's receptive-field radius the outer
quarter discards every pixel the tile edge influenced and tiled output equals untiled output up to
float rounding; smaller overlaps still blend smoothly. The radius is computed from the architecture
(:mod:`retina_sr.inference.receptive`: 9 px for F16 D3 and 21 px for F64 D10 at x8, i.e. overlaps
of 36 and 84), and :meth:`~retina_sr.inference.enhancer.BaseEnhancer.enhance` uses that overlap
unless told otherwise.

:func:`auto_tile` picks a tile side when the activations of the whole image would exceed a memory
budget (e.g. F16 at x8 on a 1024x1024 image: ~17 GB in fp32), so a large zoom never has to be
asked for ``--tile`` by hand.
This is the overlap-tile strategy of U-Net (Ronneberger et al. 2015) with the smooth blending used
by window-based SR inference (e.g. Wang et al. 2018, ESRGAN's test script; MONAI's
``sliding_window_inference`` with ``mode="gaussian"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["tile_starts", "ramp_weights", "run_tiled", "activation_bytes", "auto_tile", "LIVE_MAPS"]

#: full-resolution feature maps alive at once in LapSRN inference (a conv's input and output, the
#: upsampled features kept for the residual conv, the accumulating image): with 4, F16 at x8 on a
#: 1024x1024 input is 4 * 16 * 8192**2 * 4 bytes = 17 GB, what an untiled run allocates
LIVE_MAPS = 4


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``: evenly spread, every overlap >= ``overlap``.

    >>> tile_starts(100, 40, 8)
    [0, 30, 60]
    """
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    return [round(i * last / (n - 1)) for i in range(n)]


def _ramp(n: int) -> torch.Tensor:
    """Raised-cosine ramp of ``n`` samples rising from ~0 to ~1 (symmetric: r[i] + r[n-1-i] = 1)."""
    i = torch.arange(n, dtype=torch.float32)
    return 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / n)


def _rise(n: int) -> torch.Tensor:
    """Weights across an overlap of ``n`` samples seen from the tile that starts there.

    The outer quarter (the tile's edge, where convolutions saw zero padding) gets weight 0, the middle
    half a raised-cosine rise, the inner quarter weight 1; the neighbour gets ``rise.flip(0)``, which
    is exactly ``1 - rise``, so the weights of two overlapping tiles sum to one.
    """
    q = n // 4
    w = torch.zeros(n, dtype=torch.float32)
    w[q:n - q] = _ramp(n - 2 * q)
    w[n - q:] = 1.0
    return w


def ramp_weights(size: int, ramp_before: int, ramp_after: int) -> torch.Tensor:
    """1-D blending weights of one tile of ``size`` samples overlapping its neighbours by
    ``ramp_before`` (at its start) and ``ramp_after`` (at its end) samples (see :func:`_rise`)."""
    w = torch.ones(size, dtype=torch.float32)
    if ramp_before > 0:
        w[:ramp_before] = _rise(ramp_before)
    if ramp_after > 0:
        w[size - ramp_after:] = torch.minimum(w[size - ramp_after:], _rise(ramp_after).flip(0))
    return w


def _axis_plan(length: int, tile: int, overlap: int, scale: int) -> list[tuple[int, int, torch.Tensor]]:
    """(start, size, weights at output scale) for each tile along one axis."""
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    plan = []
    for k, s in enumerate(starts):
        before = (starts[k - 1] + size - s) if k > 0 else 0
        after = (s + size - starts[k + 1]) if k + 1 < len(starts) else 0
        plan.append((s, size, ramp_weights(size * scale, before * scale, after * scale)))
    return plan


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` (a (1, C, h, w) -> (1, C', h*scale, w*scale) map) tile by tile and blend.

    Args:
        fn: the enhancement of one tile; it may run on any device, its result is accumulated on CPU.
        x: (1, C, H, W) input.
        scale: output/input size ratio of ``fn`` (an integer: 2 ** pyramid levels).
        tile: tile side in input pixels.
        overlap: minimum overlap of neighbouring tiles in input pixels; its outer quarter is
            discarded, so >= 4x the receptive-field radius reproduces untiled output (module doc).
        progress: optional callback ``(done, total)`` after each tile.

    Returns:
        (1, C', H*scale, W*scale) float32 CPU tensor.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"run_tiled expects a (1, C, H, W) tensor, got {tuple(x.shape)}")
    _, _, h, w = x.shape
    rows = _axis_plan(h, tile, overlap, scale)
    cols = _axis_plan(w, tile, overlap, scale)
    out: torch.Tensor | None = None
    wsum = torch.zeros(1, 1, h * scale, w * scale)
    total, done = len(rows) * len(cols), 0
    for y0, th, wy in rows:
        for x0, tw, wx in cols:
            y = fn(x[:, :, y0:y0 + th, x0:x0 + tw]).float().cpu()
            if y.shape[-2:] != (th * scale, tw * scale):
                raise RuntimeError(f"tile output {tuple(y.shape[-2:])} is not the input tile "
                                   f"{(th, tw)} x{scale}: the model's scale does not match")
            if out is None:
                out = torch.zeros(1, y.shape[1], h * scale, w * scale)
            wt = (wy[:, None] * wx[None, :])[None, None]
            ys, xs = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[:, :, ys, xs] += y * wt
            wsum[:, :, ys, xs] += wt
            done += 1
            if progress is not None:
                progress(done, total)
    assert out is not None
    return out / wsum


def activation_bytes(width: int, height: int, n_up: int, features: int, bytes_per_value: int = 4) -> int:
    """Estimated peak activation memory of one untiled pass on a ``width x height`` input."""
    return LIVE_MAPS * int(features) * int(width) * int(height) * 4 ** int(n_up) * int(bytes_per_value)


def auto_tile(
    width: int,
    height: int,
    n_up: int,
    features: int,
    budget: int | None,
    overlap: int,
    multiple: int = 64,
    bytes_per_value: int = 4,
) -> int | None:
    """The tile side (input pixels) that keeps :func:`activation_bytes` within ``budget``, or None
    when the whole input fits (or ``budget`` is None).

    The side is a multiple of ``multiple`` (every tile then has one of a few shapes, which a
    compiled graph per shape needs; the bucket on the compiled path) and at least ``overlap +
    multiple``, so tiles still advance.

    >>> auto_tile(1024, 1024, 3, 16, 2 * 2**30, overlap=36)
    320
    """
    if budget is None or activation_bytes(width, height, n_up, features, bytes_per_value) <= budget:
        return None
    per_pixel = LIVE_MAPS * int(features) * 4 ** int(n_up) * int(bytes_per_value)
    side = math.isqrt(max(0, int(budget)) // per_pixel) // multiple * multiple
    return max(side, math.ceil((overlap + multiple) / multiple) * multiple)
