"""Building blocks of LapSRN and its modifications: conv stacks, recursive blocks and 2x upsamplers.

References
----------
- Lai, Huang, Ahuja, Yang, "Deep Laplacian Pyramid Networks for Fast and Accurate Super-Resolution",
  CVPR 2017 (LapSRN: 3x3 convs + LeakyReLU, 4x4 transposed convs, bilinear image upsampling).
- Lai, Huang, Ahuja, Yang, "Fast and Accurate Image Super-Resolution with Deep Laplacian Pyramid
  Networks", TPAMI 2018 (MS-LapSRN: recursive blocks with a shared-source local skip connection).
- Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017
  (residual blocks conv-ReLU-conv + skip without batch normalisation).
- Odena, Dumoulin, Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016 (resize-convolution).
- Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
  Convolutional Neural Network", CVPR 2016 (PixelShuffle), and Aitken et al., "Checkerboard artifact
  free sub-pixel convolution", arXiv:1707.02937, 2017 (ICNR initialisation).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "conv3x3",
    "PlainBlock",
    "ResidualBlock",
    "EmbeddingBlock",
    "Upsample2x",
    "bilinear_kernel",
    "BicubicUp2x",
    "bicubic_phases",
    "icnr_",
    "init_conv_",
    "image_step",
    "PyramidNet",
]

UpsampleKind = Literal["deconv", "resize_conv", "subpixel"]


def conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution with 'same' zero padding."""
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


def init_conv_(conv: nn.Conv2d | nn.ConvTranspose2d, negative_slope: float = 0.2, scale: float = 1.0) -> None:
    """He (Kaiming) normal initialisation for a LeakyReLU network (He et al. 2015), zero bias.

    ``scale`` multiplies the weights (e.g. 0.1 for residual-predicting layers so that the network
    starts close to the bilinear/nearest upsampling of its image branch).
    """
    nn.init.kaiming_normal_(conv.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
    if scale != 1.0:
        with torch.no_grad():
            conv.weight.mul_(scale)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class PlainBlock(nn.Module):
    """``depth`` x (conv3x3 -> LeakyReLU), the LapSRN feature-embedding stack (Lai et al. 2017)."""

    def __init__(self, features: int, depth: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            conv = conv3x3(features, features)
            init_conv_(conv, negative_slope)
            layers += [conv, nn.LeakyReLU(negative_slope, inplace=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ResidualBlock(nn.Module):
    """conv3x3 -> LeakyReLU -> conv3x3, plus the identity skip; no batch norm (Lim et al. 2017)."""

    def __init__(self, features: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.conv1 = conv3x3(features, features)
        self.act = nn.LeakyReLU(negative_slope, inplace=False)
        self.conv2 = conv3x3(features, features)
        init_conv_(self.conv1, negative_slope)
        init_conv_(self.conv2, negative_slope, scale=0.1)  # residual branch starts small (EDSR-style)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class EmbeddingBlock(nn.Module):
    """The feature embedding of one pyramid level.

    ``block="plain"``: ``depth`` conv3x3+LeakyReLU layers (LapSRN). ``block="residual"``:
    ``ceil(depth / 2)`` residual blocks (two convs each, so at least ``depth`` convs) followed by a
    LeakyReLU. ``recursions`` R > 1 applies the same block R times with the MS-LapSRN shared-source
    local skip: ``h_r = block(h_{r-1}) + h_0`` (Lai et al. 2018, Sec. 3.2). ``local_skip`` forces
    that skip on for R = 1 too (MS-LapSRN with weight sharing); with R = 1 and no skip this is
    exactly the LapSRN level.
    """

    def __init__(
        self,
        features: int,
        depth: int,
        block: Literal["plain", "residual"] = "plain",
        recursions: int = 1,
        local_skip: bool = False,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if recursions < 1:
            raise ValueError(f"recursions must be >= 1, got {recursions}")
        if block == "plain":
            self.block: nn.Module = PlainBlock(features, depth, negative_slope)
        elif block == "residual":
            n = max(1, math.ceil(depth / 2))
            self.block = nn.Sequential(
                *[ResidualBlock(features, negative_slope) for _ in range(n)],
                nn.LeakyReLU(negative_slope, inplace=False),
            )
        else:
            raise ValueError(f"unknown block {block!r}: use 'plain' or 'residual'")
        self.recursions = int(recursions)
        self.local_skip = bool(local_skip or recursions > 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for _ in range(self.recursions):
            h = self.block(h)
            if self.local_skip:
                h = h + x
        return h


def bilinear_kernel(size: int = 4) -> Tensor:
    """The (size, size) bilinear interpolation kernel of a stride-``size//2`` transposed conv.

    For size 4 / stride 2 / padding 1 the transposed conv equals bilinear upsampling with
    ``align_corners=False`` away from the border (Long et al., FCN, 2015).
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    k1 = 1 - (og - center).abs() / factor
    return k1[:, None] * k1[None, :]


def icnr_(weight: Tensor, scale: int = 2, init: Tensor | None = None, negative_slope: float = 0.2) -> None:
    """ICNR initialisation of a sub-pixel conv weight (Aitken et al. 2017), in place.

    ``weight`` has shape (C * scale**2, Cin, k, k). A kernel of shape (C, Cin, k, k) (``init``, or
    He-initialised) is repeated for the ``scale**2`` sub-pixel positions, so that conv + PixelShuffle
    equals nearest-neighbour upsampling followed by that conv at initialisation: no checkerboard.
    """
    out_ch, cin, kh, kw = weight.shape
    if out_ch % (scale * scale):
        raise ValueError(f"ICNR: {out_ch} output channels not divisible by scale**2 = {scale * scale}")
    c = out_ch // (scale * scale)
    if init is None:
        init = torch.empty(c, cin, kh, kw)
        nn.init.kaiming_normal_(init, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu")
    if tuple(init.shape) != (c, cin, kh, kw):
        raise ValueError(f"ICNR: init kernel shape {tuple(init.shape)} != {(c, cin, kh, kw)}")
    # PixelShuffle reads output channel c*s^2 + i for sub-pixel i of channel c
    with torch.no_grad():
        weight.copy_(init.repeat_interleave(scale * scale, dim=0).to(weight))


def _cubic_weight(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel at distance ``x`` (``a = -0.75``: OpenCV's ``INTER_CUBIC``, PyTorch's bicubic)."""
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0


def bicubic_phases(scale: int, channels: int = 3) -> Tensor:
    """Bicubic ``scale``x upsampling as ``scale**2`` phase kernels per channel: (channels * scale**2, 1, 5, 5).

    ``pixel_shuffle(conv2d(pad(x, 2, "replicate"), w, groups=channels), scale)`` is
    ``F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)`` (half-pixel centres, the border
    replicated; OpenCV's ``INTER_CUBIC`` too): output pixel ``scale * i + p`` sits at input coordinate
    ``i + (p + 1/2) / scale - 1/2``, within half a pixel of ``i``, so its four taps lie in ``i - 2 .. i + 2``.
    """
    if scale < 1:
        raise ValueError(f"bicubic_phases needs a scale >= 1, got {scale}")
    k = torch.tensor([[_cubic_weight(d - ((p + 0.5) / scale - 0.5)) for d in range(-2, 3)] for p in range(scale)],
                     dtype=torch.float64)
    w = torch.einsum("ai,bj->abij", k, k).reshape(scale * scale, 1, 5, 5).float()  # phase index py * scale + px
    return w.repeat(channels, 1, 1, 1)


class BicubicUp2x(nn.Module):
    """Fixed 2x bicubic interpolation (Keys a = -0.75, half-pixel centres, border replicated): the same
    kernel as OpenCV's ``INTER_CUBIC`` baseline, so a LapSRN whose residuals are zero equals it
    (cascaded per level). No parameters: every 2x level adds a learned residual on top of it."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)


class Upsample2x(nn.Module):
    """A learnable 2x upsampler of ``channels`` channels.

    - ``deconv``: transposed conv 4x4, stride 2, padding 1 (LapSRN). ``image=True`` initialises it
      to per-channel bilinear interpolation (as LapSRN does for the image branch); otherwise He init,
      which shows the checkerboard pattern at initialisation (Odena et al. 2016).
    - ``resize_conv``: nearest (features) / bilinear (image) 2x resize, then a 3x3 conv (Odena et al.
      2016); the image-branch conv starts as the identity.
    - ``subpixel``: 3x3 conv to 4C channels + PixelShuffle(2) (Shi et al. 2016) with ICNR init
      (Aitken et al. 2017); the image branch starts as nearest-neighbour upsampling.

    Feature upsamplers are followed by a LeakyReLU (LapSRN); image upsamplers are linear.
    """

    def __init__(self, channels: int, kind: UpsampleKind, image: bool = False, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.kind = kind
        self.image = image
        c = channels
        if kind == "deconv":
            self.op: nn.Module = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, bias=not image)
            if image:
                with torch.no_grad():
                    w = torch.zeros(c, c, 4, 4)
                    w[range(c), range(c)] = bilinear_kernel(4)
                    self.op.weight.copy_(w)
            else:
                init_conv_(self.op, negative_slope)
        elif kind == "resize_conv":
            conv = conv3x3(c, c, bias=not image)
            if image:
                with torch.no_grad():
                    nn.init.dirac_(conv.weight)
            else:
                init_conv_(conv, negative_slope)
            self.op = conv
        elif kind == "subpixel":
            conv = conv3x3(c, 4 * c, bias=not image)
            if image:
                ident = torch.zeros(c, c, 3, 3)
                nn.init.dirac_(ident)
                icnr_(conv.weight, 2, init=ident)
            else:
                icnr_(conv.weight, 2, negative_slope=negative_slope)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            self.op = nn.Sequential(conv, nn.PixelShuffle(2))
        else:
            raise ValueError(f"unknown upsample {kind!r}: use 'deconv', 'resize_conv' or 'subpixel'")
        self.act: nn.Module = nn.Identity() if image else nn.LeakyReLU(negative_slope, inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "resize_conv":
            mode = "bilinear" if self.image else "nearest"
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            x = F.interpolate(x, scale_factor=2.0, mode=mode, **kwargs)
        return self.act(self.op(x))


def image_step(up: nn.Module | None, y: Tensor, residual: Tensor) -> Tensor:
    """The image branch ``Up_i(y) + R`` (or ``y + R`` at level 0) in fp32, also under bf16/fp16
    autocast: bf16 resolves ~1/256 on [0.5, 1), as coarse as one 8-bit grey level, so only the
    residual convs (features) run in reduced precision and the image is never rounded to it."""
    with torch.autocast(y.device.type, enabled=False):
        y = y.float()
        return (up(y) if up is not None else y) + residual.float()


class PyramidNet(nn.Module):
    """What LapSRN and the LR head share: ``levels`` 2x levels, ``forward(x, n_up) -> [level0, x2, ...]`` and
    level 0 (``head`` conv + LeakyReLU ``act``, the embedding ``embed[0]``, the residual conv ``res0``)."""

    _levels: int
    head: nn.Module
    act: nn.Module
    embed: nn.ModuleList
    res0: nn.Module

    @property
    def levels(self) -> int:
        """Number of 2x levels (``log2`` of the largest zoom)."""
        return self._levels

    @property
    def max_zoom(self) -> int:
        """The largest zoom factor, ``2 ** levels``."""
        return 2**self._levels

    def top(self, x: Tensor, n_up: int | None = None) -> Tensor:
        """The last output, ``forward(x, n_up)[-1]`` (inference wants only the zoom asked for; a model that can
        compute it without the levels below overrides this)."""
        return self(x, n_up)[-1]

    def _level0(self, x: Tensor, n_up: int | None) -> tuple[int, Tensor, Tensor]:
        """``(n_up, g, y0)``: ``n_up`` (default: every level) after checking it and the (N, 3, H, W) input,
        the input-resolution features ``g`` and the level-0 image ``y0 = x + res0(g)``."""
        n = self._levels if n_up is None else int(n_up)
        if not 0 <= n <= self._levels:
            raise ValueError(f"n_up={n} outside 0..{self._levels} (this model's largest zoom is x{self.max_zoom})")
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"{type(self).__name__} expects (N, 3, H, W) RGB input, got shape {tuple(x.shape)}")
        g = self.embed[0](self.act(self.head(x)))
        return n, g, image_step(None, x, self.res0(g))
