"""The receptive field of a LapSRN (or an LR head), computed from its architecture (kernel sizes, depth, levels).

The radius ``r`` (input pixels) is how far from an output pixel's position an input pixel can still
change it. Inference needs it in two places: a region of interest is enhanced with ``r`` pixels of
surrounding image (so its border looks as it would inside the full image), and tiles must overlap
by ``4 r`` because the feathered blending discards the outer quarter of each overlap
(:mod:`retina_sr.inference.tiling`).

The walk follows :meth:`retina_sr.models.lapsrn.LapSRN.forward`: at level ``k`` one pixel is
``2**-k`` input pixels, so a 3x3 conv adds 1 input pixel at level 0, 1/2 at level 1 and so on. Each
2x upsampler adds the radius of its interpolation kernel in the coarser level's pixels (4x4
stride-2 transposed conv: 1; bicubic: 2 taps; bilinear: 1; nearest: 1/2; sub-pixel conv: its
conv plus 1/2, the offset of the shuffled pixels). The result is rounded up, so it is an upper bound; the test compares it with the measured
support of the input gradient. LapSRN F64 D10 at x8: 21 px (tile overlap 84); F16 D3 at x8: 9 px.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

from torch import nn

if TYPE_CHECKING:
    from ..models.lapsrn import LapSRN

__all__ = ["receptive_radius", "tile_overlap"]


def _conv_radius(module: nn.Module) -> float:
    """Radius of a chain of same-resolution convolutions (plain stacks, residual blocks: the
    identity skip adds nothing), in the module's own pixels."""
    return float(sum(m.dilation[0] * (m.kernel_size[0] - 1) // 2 for m in module.modules()
                     if isinstance(m, nn.Conv2d)))


def _embed_radius(block: nn.Module) -> float:
    """An ``EmbeddingBlock`` applies its conv chain ``recursions`` times."""
    return getattr(block, "recursions", 1) * _conv_radius(getattr(block, "block", block))


def _up_radius(up: Any) -> float:
    """Radius of a 2x upsampler (``BicubicUp2x``, ``Upsample2x``: ``kind``, ``op``, ``image``) in the
    pixels of its (coarser) input."""
    kind = getattr(up, "kind", None)
    if kind is None:  # BicubicUp2x: 4 taps, two on each side
        return 2.0
    if kind == "deconv":
        op = up.op
        return math.ceil((op.kernel_size[0] - 1) / 2 / op.stride[0])
    if kind == "subpixel":  # the shuffled pixels sit up to half a coarse pixel from their source
        return _conv_radius(up.op) + 0.5
    if kind == "resize_conv":  # interpolation, then a conv at the finer level
        return (1.0 if up.image else 0.5) + _conv_radius(up.op) / 2
    raise ValueError(f"unknown upsampler {type(up).__name__} (kind={kind!r}): cannot compute its receptive field")


def receptive_radius(model: nn.Module, n_up: int | None = None) -> int:
    """Receptive-field radius in input pixels of ``model``'s ``2**n_up`` output (default: all levels).

    ``model`` is a :class:`~retina_sr.models.lapsrn.LapSRN` (``head``, ``embed``, ``res0``,
    ``up_feat``, ``up_img``, ``res``; ``cfg.share_weights``).

    >>> from retina_sr.config import ModelConfig
    >>> from retina_sr.models import build_model
    >>> receptive_radius(build_model(ModelConfig(features=64, depth=10), levels=3))
    21
    """
    from ..models.lrhead import LRHead

    if isinstance(model, LRHead):
        return _lrhead_radius(model, n_up)
    model = cast("LapSRN", model)  # the attributes above; nn.Module's own __getattr__ types them loosely
    n = model.levels if n_up is None else int(n_up)
    shared = bool(model.cfg.share_weights)

    def idx(k: int) -> int:
        return 0 if shared else k

    r_g = _conv_radius(model.head) + _embed_radius(model.embed[0])  # features g_0
    r_y = r_g + _conv_radius(model.res0)  # level 0 image
    for k in range(1, n + 1):
        coarse = 2.0 ** (k - 1)  # pixels of level k-1 per input pixel
        i = idx(k - 1)
        r_h = r_g + _up_radius(model.up_feat[i]) / coarse
        r_y = max(r_y + _up_radius(model.up_img[i]) / coarse, r_h + _conv_radius(model.res[i]) / (2 * coarse))
        if k < n:
            r_g = r_h + _embed_radius(model.embed[idx(k)]) / (2 * coarse)
    return math.ceil(r_y - 1e-9)


def _lrhead_radius(model: nn.Module, n_up: int | None) -> int:
    """:class:`~retina_sr.models.lrhead.LRHead`: the trunk and every residual conv at the input resolution,
    the shuffled pixels up to half an input pixel from their source, the hold filter half an input pixel
    more, the bicubic cascade as LapSRN's with the 3x3 refinement at each level's resolution."""
    m = cast(Any, model)
    n = m.levels if n_up is None else int(n_up)
    r_g = _conv_radius(m.head) + _embed_radius(m.embed[0])
    r_y = r_g + _conv_radius(m.res0)
    if m.direct and n:  # zoom 2**n from the input grid: the 5x5 image conv, the 1x1 residual conv and its 3x3
        # phase hold, each output pixel within half an input pixel of the input pixel whose phases it is
        return math.ceil(max(r_y + 2, r_g + _conv_radius(m.res[n - 1].conv) + 1) + 0.5 - 1e-9)
    for k in range(1, n + 1):
        coarse = 2.0 ** (k - 1)
        # the hold filter reaches s/2 output pixels = half an input pixel; C_k one output pixel beyond bicubic
        r_u = r_y + _up_radius(m.up_img[k - 1]) / coarse + _conv_radius(m.refine[k - 1]) / (2 * coarse)
        r_y = max(r_u, r_g + _conv_radius(m.res[k - 1]) + 0.5 + 0.5)
    return math.ceil(r_y - 1e-9)


def tile_overlap(radius: int) -> int:
    """Tile overlap that reproduces untiled output: the blending discards the outer quarter of each
    overlap, which must hold the whole receptive-field radius (see :mod:`~retina_sr.inference.tiling`)."""
    return 4 * max(1, int(radius))
