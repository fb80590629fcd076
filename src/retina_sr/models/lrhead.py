"""The LR head: every convolution at the input resolution, a sub-pixel output per zoom (the fast CPU model).

Structure (``F`` = ``features``, ``D`` = ``depth``, ``L`` = ``levels``)::

    g   = E(LReLU(conv3x3(x)))                      # the trunk: D convs (+LReLU), input resolution only
    y0  = x + R_0(g)                                # level 0: deblur/denoise residual, same size
    for k = 1..n_up:
        y_k = Up_i(y_{k-1}) + PixelShuffle(2**k)(R_k(g))   # R_k: conv3x3 F -> 3 * 4**k, at the input resolution

The image branch is LapSRN's (:class:`~retina_sr.models.lapsrn.LapSRN` with ``image_branch="bicubic"``:
cascaded fixed bicubic 2x, every residual conv starts at zero, so the untrained model *is* the baseline)
and the interface is the same (``forward(x, n_up) -> [level0, x2, x4, ...]``, ``levels``, ``max_zoom``),
so every phase, loss, evaluation and export treats it as it treats LapSRN. Where LapSRN runs level ``k``'s
feature convs at ``2**k`` times the input resolution, here the trunk runs once at the input resolution
and each zoom's detail comes from one conv whose ``4**k`` output phases a pixel shuffle interleaves
(Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
Convolutional Neural Network", CVPR 2016): at x4 a LapSRN F16 D3 does ~4x the multiply-adds of an
LR head F16 D3. The periodic loss (``losses/periodic.py``) keeps the shuffled phases from drifting into a
checkerboard, as for LapSRN's sub-pixel variant. Parameter names follow LapSRN's where the part is the
same (``head``, ``embed.0``, ``res0``), so a variant started from a LapSRN phase loads those.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ModelConfig
from .blocks import BicubicUp2x, EmbeddingBlock, conv3x3, image_step, init_conv_

__all__ = ["LRHead"]


class LRHead(nn.Module):
    """A trunk at the input resolution with one sub-pixel residual conv per pyramid level.

    ``forward(x, n_up=None) -> [level0, x2, x4, ...]`` with ``n_up + 1`` images, as :class:`LapSRN`;
    ``x`` is (N, 3, H, W) float in [0, 1]; outputs are not clamped.
    """

    def __init__(self, cfg: ModelConfig, levels: int) -> None:
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        if cfg.arch != "lrhead" or cfg.share_weights or cfg.image_branch != "bicubic":
            raise ValueError(f"LRHead needs model.arch 'lrhead', no shared weights and the bicubic image branch, got {cfg}")
        self.cfg = cfg
        self._levels = int(levels)
        fch, slope = cfg.features, cfg.negative_slope
        self.head = conv3x3(3, fch)
        init_conv_(self.head, slope)
        self.act = nn.LeakyReLU(slope, inplace=False)
        self.embed = nn.ModuleList([EmbeddingBlock(fch, cfg.depth, cfg.block, cfg.recursions, cfg.recursions > 1,
                                                   slope)])

        def residual(phases: int) -> nn.Conv2d:
            conv = conv3x3(fch, 3 * phases)
            init_conv_(conv, slope, scale=0.0)  # the untrained model is the bicubic baseline
            return conv

        self.res0 = residual(1)
        self.up_img = nn.ModuleList([BicubicUp2x() for _ in range(self._levels)])
        self.res = nn.ModuleList([residual(4**k) for k in range(1, self._levels + 1)])

    @property
    def levels(self) -> int:
        """Number of 2x levels (``log2`` of the largest zoom)."""
        return self._levels

    @property
    def max_zoom(self) -> int:
        """The largest zoom factor, ``2 ** levels``."""
        return 2**self._levels

    def forward(self, x: Tensor, n_up: int | None = None) -> list[Tensor]:
        n = self._levels if n_up is None else int(n_up)
        if not 0 <= n <= self._levels:
            raise ValueError(f"n_up={n} outside 0..{self._levels} (this model's largest zoom is x{self.max_zoom})")
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"LRHead expects (N, 3, H, W) RGB input, got shape {tuple(x.shape)}")
        g = self.embed[0](self.act(self.head(x)))
        y = image_step(None, x, self.res0(g))
        outs = [y]
        for k in range(1, n + 1):
            y = image_step(self.up_img[k - 1], y, F.pixel_shuffle(self.res[k - 1](g), 2**k))
            outs.append(y)
        return outs

    def extra_repr(self) -> str:
        c = self.cfg
        return f"levels={self._levels}, F={c.features}, D={c.depth}, R={c.recursions}, block={c.block}, sub-pixel heads"
