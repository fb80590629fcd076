"""The LR head: every convolution at the input resolution, a sub-pixel output per zoom (the fast CPU model).

Structure (``F`` = ``features``, ``D`` = ``depth``, ``L`` = ``levels``)::

    g   = E(LReLU(conv3x3(x)))                      # the trunk: D convs (+LReLU), input resolution only
    y0  = x + R_0(g)                                # level 0: deblur/denoise residual, same size
    for k = 1..n_up:                                # s = 2**k
        u   = Up_i(y_{k-1})                         # the image branch: fixed bicubic 2x
        y_k = u + C_k(u) + H_s(PixelShuffle(s)(R_k(g)))   # R_k: conv3x3 F -> 3 * s**2, at the input resolution

The image branch is LapSRN's (:class:`~retina_sr.models.lapsrn.LapSRN` with ``image_branch="bicubic"``:
cascaded fixed bicubic 2x, every residual conv starts at zero, so the untrained model *is* the baseline)
and the interface is the same (``forward(x, n_up) -> [level0, x2, x4, ...]``, ``levels``, ``max_zoom``),
so every phase, loss, evaluation and export treats it as it treats LapSRN. Where LapSRN runs level ``k``'s
feature convs at ``2**k`` times the input resolution, here the trunk runs once at the input resolution
and each zoom's detail comes from one conv whose ``4**k`` output phases a pixel shuffle interleaves
(Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
Convolutional Neural Network", CVPR 2016): at x4 a LapSRN F16 D3 does ~4x the multiply-adds of an
LR head F16 D3.

``H_s`` is a fixed hold filter at the output resolution: the separable kernel ``[1/2, 1, ..., 1, 1/2] / s``
(``s + 1`` taps: an ``s``-pixel box, the zero-order hold, convolved with a 2-pixel box so that it is
symmetric and does not shift the residual). Its frequency response is zero at every multiple of ``1/s``
cycles per pixel, the frequencies at which ``s**2`` independently learned sub-pixel phases paint their
``s``-periodic grid: a flat input gives a flat output whatever the weights (Sugawara, Shiota, Kiya,
"Checkerboard artifacts free convolutional neural networks", APSIPA Trans. 2019). Without it the trained
head painted a visible 4-pixel mesh at x4 on real photographs, which the Frangi vessel map took for
structure (docs/ablation.md). The filter also keeps the residual from cancelling the image branch's own
energy at those frequencies (bicubic 2x leaves ~8x HR's at the Nyquist frequency on these photographs),
which is what ``C_k`` is for: a 3x3 conv (3 -> 3 channels, zero at initialisation) on the bicubic image at
the output resolution, shift-invariant and so free of any grid, ~1 % of the head's operations.
Parameter names follow LapSRN's where the part is the
same (``head``, ``embed.0``, ``res0``), so a variant started from a LapSRN phase loads those.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ModelConfig
from .blocks import BicubicUp2x, EmbeddingBlock, PyramidNet, conv3x3, init_conv_

__all__ = ["LRHead", "HoldFilter"]


class HoldFilter(nn.Module):
    """The fixed ``s + 1``-tap separable kernel ``[1/2, 1, ..., 1, 1/2] / s`` per channel (module doc),
    replicate-padded so that the output has the input's size and a flat image stays flat up to the border."""

    row: Tensor  # buffers (register_buffer)
    col: Tensor

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError(f"the hold filter is for zooms >= 2, got {scale}")
        taps = torch.ones(scale + 1)
        taps[0] = taps[-1] = 0.5
        taps /= scale
        self.scale, self.channels = int(scale), int(channels)
        # not persistent: fixed by the architecture, not part of a checkpoint
        self.register_buffer("row", taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("col", taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        p = self.scale // 2
        x = F.pad(x, (p, p, p, p), mode="replicate")
        x = F.conv2d(x, self.row.to(x.dtype), groups=self.channels)
        return F.conv2d(x, self.col.to(x.dtype), groups=self.channels)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, taps={self.scale + 1}"


class LRHead(PyramidNet):
    """A trunk at the input resolution with one sub-pixel residual conv per pyramid level.

    ``forward(x, n_up=None) -> [level0, x2, x4, ...]`` with ``n_up + 1`` images, as :class:`LapSRN`;
    ``x`` is (N, 3, H, W) float in [0, 1]; outputs are not clamped.
    """

    def __init__(self, cfg: ModelConfig, levels: int) -> None:
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        if cfg.arch != "lrhead":  # ModelConfig itself rules out shared weights and a learned image branch for it
            raise ValueError(f"LRHead needs a ModelConfig with arch 'lrhead', got arch {cfg.arch!r}")
        self.cfg = cfg
        self._levels = int(levels)
        fch, slope = cfg.features, cfg.negative_slope
        self.head = conv3x3(3, fch)
        init_conv_(self.head, slope)
        self.act = nn.LeakyReLU(slope, inplace=False)
        self.embed = nn.ModuleList([EmbeddingBlock(fch, cfg.depth, cfg.block, cfg.recursions, cfg.recursions > 1,
                                                   slope)])

        def zero_conv(cin: int, cout: int) -> nn.Conv2d:
            conv = conv3x3(cin, cout)
            init_conv_(conv, slope, scale=0.0)  # the untrained model is the bicubic baseline
            return conv

        self.res0 = zero_conv(fch, 3)
        self.up_img = nn.ModuleList([BicubicUp2x() for _ in range(self._levels)])
        self.res = nn.ModuleList([zero_conv(fch, 3 * 4**k) for k in range(1, self._levels + 1)])
        self.hold = nn.ModuleList([HoldFilter(2**k) for k in range(1, self._levels + 1)])
        self.refine = nn.ModuleList([zero_conv(3, 3) for _ in range(self._levels)])

    def forward(self, x: Tensor, n_up: int | None = None) -> list[Tensor]:
        n, g, y = self._level0(x, n_up)
        outs = [y]
        for k in range(1, n + 1):
            detail = self.hold[k - 1](F.pixel_shuffle(self.res[k - 1](g), 2**k))
            with torch.autocast(y.device.type, enabled=False):  # the image and its sums in fp32 (blocks.image_step)
                u = self.up_img[k - 1](y.float())
                y = u + self.refine[k - 1](u) + detail.float()
            outs.append(y)
        return outs

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"levels={self._levels}, F={c.features}, D={c.depth}, R={c.recursions}, block={c.block}, "
                "sub-pixel residual per zoom with a hold filter")
