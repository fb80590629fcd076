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

``model.direct: true`` computes every zoom straight from the input grid instead of the cascade::

    y_k = PixelShuffle(s)( B_k(y0) + H'_s(R'_k(g)) )

``B_k`` is bicubic ``s``x followed by ``I + C_k`` at the output resolution, folded into one 5x5 conv
``3 -> 3 s**2`` on the input grid (:class:`DirectUp`; its kernel is recomputed from ``C_k``'s weights at every
call, so ``C_k`` trains as the cascade's does and stays shift-invariant), ``R'_k`` a 1x1 conv ``F -> 3 s**2`` and
``H'_s`` the hold filter on its phase channels (:class:`PhaseHold`, a 3x3 grouped conv on the input grid); the two
fold into one 3x3 conv for inference (:class:`PhaseResidual`). Nothing but the final pixel shuffle
runs at the output resolution, so a CPU graph (ONNX Runtime) is the trunk plus a few input-grid convs, ESPCN's
cost. The untrained model is single-step bicubic ``s``x (the evaluation's baseline itself, not cascaded 2x
steps). Away from the image border each part equals its output-resolution form exactly; at the border the
input-grid convs pad the input grid (replicate for ``B_k``, zeros for ``H'_s``), which is this model's definition
in training and inference alike.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ModelConfig
from .blocks import BicubicUp2x, EmbeddingBlock, PyramidNet, bicubic_phases, conv3x3, init_conv_

__all__ = ["LRHead", "HoldFilter", "PhaseHold", "PhaseResidual", "DirectUp", "FixedUp"]


def _hold_taps(scale: int) -> Tensor:
    """``[1/2, 1, ..., 1, 1/2] / scale`` (``scale + 1`` taps, offsets ``-scale/2 .. scale/2``)."""
    if scale < 2:
        raise ValueError(f"the hold filter is for zooms >= 2, got {scale}")
    taps = torch.ones(scale + 1)
    taps[0] = taps[-1] = 0.5
    return taps / scale


def _zero_conv(cin: int, cout: int, slope: float) -> nn.Conv2d:
    conv = conv3x3(cin, cout)
    init_conv_(conv, slope, scale=0.0)  # the untrained model is the bicubic baseline
    return conv


class HoldFilter(nn.Module):
    """The fixed ``s + 1``-tap separable kernel ``[1/2, 1, ..., 1, 1/2] / s`` per channel (module doc),
    replicate-padded so that the output has the input's size and a flat image stays flat up to the border."""

    row: Tensor  # buffers (register_buffer)
    col: Tensor

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        taps = _hold_taps(scale)
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


class PhaseHold(nn.Module):
    """:class:`HoldFilter` ``(scale)`` on the phase channels ``z`` of a pixel shuffle:
    ``pixel_shuffle(PhaseHold(s)(z), s) == HoldFilter(s)(pixel_shuffle(z, s))`` away from the border.

    The filter reaches ``s/2`` output pixels, less than one input pixel, so output phase ``p`` of input pixel ``i``
    reads phases of ``i - 1 .. i + 1``: a 3x3 conv on the ``s**2`` phases of each channel (grouped by channel,
    zero padding on the input grid)."""

    weight: Tensor  # a buffer (register_buffer)

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        s, h = int(scale), _hold_taps(scale)
        taps = {t: float(h[t + s // 2]) for t in range(-(s // 2), s // 2 + 1)}
        row = torch.zeros(s, s, 3)  # the 1-D filter on the phase grid: (output phase p, source phase q, offset d)
        for p in range(s):
            for q in range(s):
                for d in (-1, 0, 1):  # source phase q of the input pixel at offset d is s * d + q - p output pixels away
                    row[p, q, d + 1] = taps.get(s * d + q - p, 0.0)
        w = torch.einsum("acu,bdv->abcduv", row, row).reshape(s * s, s * s, 3, 3)
        self.scale, self.channels = s, int(channels)
        self.register_buffer("weight", w.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        return F.conv2d(z, self.weight.to(z.dtype), padding=1, groups=self.channels)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, on {self.scale ** 2} phases per channel"


def _phase_conv(y: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The 5x5 input-grid conv of :class:`DirectUp` / :class:`FixedUp` (the input edge-replicated, as bicubic)."""
    return F.conv2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), weight.to(y.dtype), bias.to(y.dtype))


class DirectUp(nn.Module):
    """Bicubic ``scale``x, then ``u + C(u)`` (``C``: the 3x3 conv ``refine``, 3 -> 3, zero at initialisation) at the
    output resolution, as one 5x5 conv ``3 -> 3 scale**2`` on the input grid (:meth:`phases`).

    :meth:`kernel` folds the two by running them on a unit impulse per channel (the composite is linear and its
    taps stay within 2 input pixels: bicubic's four taps of a phase lie in ``-2 .. 2`` and ``C``'s one output pixel
    crosses into the neighbouring pixel only from the phase nearest to it), differentiably in ``C``'s weights."""

    bicubic: Tensor  # a buffer (register_buffer)

    def __init__(self, scale: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.scale = int(scale)
        self.register_buffer("bicubic", bicubic_phases(self.scale, 3), persistent=False)
        self.refine = _zero_conv(3, 3, negative_slope)

    def kernel(self) -> tuple[Tensor, Tensor]:
        """The (3 scale**2, 3, 5, 5) weight and (3 scale**2,) bias of :meth:`phases`."""
        s, w = self.scale, self.refine.weight
        probe = torch.zeros(3, 3, 7, 7, device=w.device, dtype=w.dtype)
        probe[range(3), range(3), 3, 3] = 1.0
        u = F.pixel_shuffle(F.conv2d(F.pad(probe, (2, 2, 2, 2), mode="replicate"), self.bicubic.to(w.dtype), groups=3), s)
        z = F.pixel_unshuffle(u + F.conv2d(u, w, padding=1), s)  # (input channel, 3 s**2 phases, 7, 7); bias apart
        # phase o at pixel i reads the input at i + j - 2 with weight[o, c, j]: the impulse at 3 seen from i = 5 - j
        bias = cast(Tensor, self.refine.bias)  # _zero_conv has one
        return z[:, :, 1:6, 1:6].flip(-2, -1).transpose(0, 1).contiguous(), bias.repeat_interleave(s * s)

    def phases(self, y: Tensor) -> Tensor:
        return _phase_conv(y, *self.kernel())

    def fixed(self) -> FixedUp:
        """This upsampler with its kernel computed once (inference, export)."""
        weight, bias = self.kernel()
        return FixedUp(weight.detach(), bias.detach(), self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, bicubic + 3x3 refinement folded into a 5x5 input-grid conv"


class FixedUp(nn.Module):
    """A :class:`DirectUp` whose kernel is a constant (what :meth:`DirectUp.fixed` returns)."""

    weight: Tensor  # buffers (register_buffer)
    bias: Tensor

    def __init__(self, weight: Tensor, bias: Tensor, scale: int) -> None:
        super().__init__()
        self.scale = int(scale)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def phases(self, y: Tensor) -> Tensor:
        return _phase_conv(y, self.weight, self.bias)


class PhaseResidual(nn.Module):
    """A direct head's sub-pixel residual for zoom ``scale``: a 1x1 conv ``F -> 3 scale**2`` (no bias, zero at
    initialisation) and :class:`PhaseHold` on its phases. Both are linear, so :meth:`fixed` folds them into one
    3x3 conv ``F -> 3 scale**2`` (exact, the border too: the 1x1 conv maps the zero padding to zero): an inference
    graph pays one conv for the residual and the grid-free hold together."""

    def __init__(self, features: int, scale: int) -> None:
        super().__init__()
        self.scale = int(scale)
        self.conv = nn.Conv2d(features, 3 * self.scale**2, 1, bias=False)  # a bias per phase would paint a grid
        nn.init.zeros_(self.conv.weight)  # the untrained model is the bicubic baseline
        self.hold = PhaseHold(self.scale)

    def forward(self, g: Tensor) -> Tensor:
        return self.hold(self.conv(g))

    def fixed(self) -> nn.Conv2d:
        """The same map as one 3x3 conv (inference, export)."""
        s2 = self.scale**2
        h = self.hold.weight.view(3, s2, s2, 3, 3)  # (colour, output phase, input phase, dy, dx)
        r = self.conv.weight.detach()[:, :, 0, 0].view(3, s2, -1)  # (colour, input phase, feature)
        out = nn.Conv2d(self.conv.in_channels, 3 * s2, 3, padding=1, bias=False).to(r.device)
        with torch.no_grad():
            out.weight.copy_(torch.einsum("copyx,cpf->cofyx", h.to(r.dtype), r).reshape(3 * s2, -1, 3, 3))
        return out


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

        self.direct = bool(cfg.direct)
        self.res0 = _zero_conv(fch, 3, slope)
        if self.direct:
            self.res = nn.ModuleList([PhaseResidual(fch, 2**k) for k in range(1, self._levels + 1)])
            self.up_img = nn.ModuleList([DirectUp(2**k, slope) for k in range(1, self._levels + 1)])
        else:
            self.res = nn.ModuleList([_zero_conv(fch, 3 * 4**k, slope) for k in range(1, self._levels + 1)])
            self.up_img = nn.ModuleList([BicubicUp2x() for _ in range(self._levels)])
            self.hold = nn.ModuleList([HoldFilter(2**k) for k in range(1, self._levels + 1)])
            self.refine = nn.ModuleList([_zero_conv(3, 3, slope) for _ in range(self._levels)])

    def forward(self, x: Tensor, n_up: int | None = None) -> list[Tensor]:
        n, g, y = self._level0(x, n_up)
        outs = [y]
        if self.direct:
            return outs + [self._direct(g, y, k) for k in range(1, n + 1)]
        for k in range(1, n + 1):
            detail = self.hold[k - 1](F.pixel_shuffle(self.res[k - 1](g), 2**k))
            with torch.autocast(y.device.type, enabled=False):  # the image and its sums in fp32 (blocks.image_step)
                u = self.up_img[k - 1](y.float())
                y = u + self.refine[k - 1](u) + detail.float()
            outs.append(y)
        return outs

    def top(self, x: Tensor, n_up: int | None = None) -> Tensor:
        """``forward(x, n_up)[-1]``; a direct head computes only that zoom."""
        if not self.direct:
            return super().top(x, n_up)
        n, g, y0 = self._level0(x, n_up)
        return self._direct(g, y0, n) if n else y0

    def _direct(self, g: Tensor, y0: Tensor, k: int) -> Tensor:
        """Zoom ``2**k`` of a direct head from the features ``g`` and the level-0 image ``y0`` (module doc)."""
        detail = self.res[k - 1](g)  # PhaseResidual (or, exported, its fixed 3x3 conv)
        with torch.autocast(y0.device.type, enabled=False):  # the image and its sums in fp32 (blocks.image_step)
            up = cast("DirectUp | FixedUp", self.up_img[k - 1])  # FixedUp in an exported copy (inference.fuse)
            return F.pixel_shuffle(up.phases(y0.float()) + detail.float(), 2**k)

    def extra_repr(self) -> str:
        c = self.cfg
        path = "every zoom direct from the input grid" if self.direct else "cascaded bicubic 2x image branch"
        return (f"levels={self._levels}, F={c.features}, D={c.depth}, R={c.recursions}, block={c.block}, "
                f"sub-pixel residual per zoom with a hold filter, {path}")
