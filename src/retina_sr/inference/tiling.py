"""Tiled inference with feathered (raised-cosine) blending for images larger than memory allows.

The input is cut into overlapping tiles (``tile`` pixels, neighbours overlapping by at least
``overlap``), each tile is enhanced on its own and the results are blended. Across each overlap the
weight of a tile is 0 on the outer quarter (next to its edge, where convolutions saw zero padding
instead of image), rises along a raised cosine (Hann half-window) over the middle half and is 1 on
the inner quarter; the two weights of neighbouring tiles sum to one everywhere, so no seam shows.
Image borders keep weight 1. With ``overlap >= 4 x`` the model's receptive-field radius the outer
quarter discards every pixel the tile edge influenced and tiled output equals untiled output up to
float rounding; smaller overlaps still blend smoothly. LapSRN radii (input pixels, x8): about 5 for
F4 D1, 9 for F16 D3, 21 for F16/F64 D10, i.e. overlap 32 suits the demo models and 64-96 the
paper-size model.
This is the overlap-tile strategy of U-Net (Ronneberger et al. 2015) with the smooth blending used
by window-based SR inference (e.g. Wang et al. 2018, ESRGAN's test script; MONAI's
``sliding_window_inference`` with ``mode="gaussian"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["tile_starts", "ramp_weights", "run_tiled"]


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
