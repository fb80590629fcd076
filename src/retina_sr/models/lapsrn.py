"""LapSRN (Lai et al. 2017) with a same-size level 0 and the MS-LapSRN modifications.

Structure (``F`` = ``features``, ``D`` = ``depth``, ``L`` = ``levels``)::

    f0  = LReLU(conv3x3(x))                         # 3 -> F, at the input resolution
    g0  = E_0(f0)                                   # D convs (+LReLU) at the input resolution
    y0  = x + R_0(g0)                               # level 0: deblur/denoise residual, same size
    for k = 1..n_up:
        h_k = LReLU(Up_f,k(g_{k-1}))                # 2x feature upsampling
        y_k = Up_i,k(y_{k-1}) + R_k(h_k)            # image branch: 2x upsampling + residual
        g_k = E_k(h_k)                              # next level's embedding (only if k < n_up)

``E_{k}`` for ``k >= 1`` is the LapSRN feature extraction of level ``k + 1``: D convs at the coarse
resolution followed by the transposed conv, so with the level-0 head removed this is exactly the
LapSRN of the paper. ``share_weights`` (MS-LapSRN, Lai et al. TPAMI 2018) uses one ``E``, one
``Up_f``, one ``Up_i`` and one ``R`` (levels >= 1) for all levels; ``R_0`` predicts from
non-upsampled features and stays separate.

References: Lai et al., "Deep Laplacian Pyramid Networks for Fast and Accurate Super-Resolution",
CVPR 2017; Lai et al., "Fast and Accurate Image Super-Resolution with Deep Laplacian Pyramid
Networks", TPAMI 2018.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig, VariantConfig
from .blocks import BicubicUp2x, EmbeddingBlock, Upsample2x, conv3x3, init_conv_

__all__ = ["LapSRN", "build_model", "apply_variant"]


class LapSRN(nn.Module):
    """Laplacian pyramid super-resolution network returning every pyramid level.

    ``forward(x, n_up=None) -> [level0, x2, x4, ...]`` with ``n_up + 1`` images (default
    ``n_up = levels``); ``x`` is (N, 3, H, W) float in [0, 1]. Zoom ``s`` uses ``n_up = log2(s)``
    and the last output. Outputs are not clamped (training losses see the raw values).
    """

    def __init__(self, cfg: ModelConfig, levels: int) -> None:
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        self.cfg = cfg
        self._levels = int(levels)
        fch, slope = cfg.features, cfg.negative_slope
        local_skip = cfg.share_weights or cfg.recursions > 1

        def embed() -> EmbeddingBlock:
            return EmbeddingBlock(fch, cfg.depth, cfg.block, cfg.recursions, local_skip, slope)

        bicubic = cfg.image_branch == "bicubic"

        def residual() -> nn.Conv2d:
            conv = conv3x3(fch, 3)
            # bicubic image branch: residuals start at zero, so the untrained model *is* the baseline
            # (x at level 0, cascaded bicubic above) and training can only add to it; learned branch:
            # small He init, close to the branch's bilinear start (LapSRN)
            init_conv_(conv, slope, scale=0.0 if bicubic else 0.1)
            return conv

        self.head = conv3x3(3, fch)
        init_conv_(self.head, slope)
        self.act = nn.LeakyReLU(slope, inplace=False)
        self.res0 = residual()
        n_embed = 1 if cfg.share_weights else max(1, self._levels)
        n_up = min(1, self._levels) if cfg.share_weights else self._levels
        self.embed = nn.ModuleList([embed() for _ in range(n_embed)])
        self.up_feat = nn.ModuleList([Upsample2x(fch, cfg.upsample, False, slope) for _ in range(n_up)])
        self.up_img = nn.ModuleList([BicubicUp2x() if bicubic else Upsample2x(3, cfg.upsample, True, slope)
                                     for _ in range(n_up)])
        self.res = nn.ModuleList([residual() for _ in range(n_up)])

    @property
    def levels(self) -> int:
        """Number of 2x levels (``log2`` of the largest zoom)."""
        return self._levels

    @property
    def max_zoom(self) -> int:
        """The largest zoom factor, ``2 ** levels``."""
        return 2**self._levels

    def _idx(self, k: int) -> int:
        return 0 if self.cfg.share_weights else k

    def forward(self, x: Tensor, n_up: int | None = None) -> list[Tensor]:
        n = self._levels if n_up is None else int(n_up)
        if not 0 <= n <= self._levels:
            raise ValueError(f"n_up={n} outside 0..{self._levels} (this model's largest zoom is x{self.max_zoom})")
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"LapSRN expects (N, 3, H, W) RGB input, got shape {tuple(x.shape)}")
        g = self.embed[0](self.act(self.head(x)))
        y = _image_step(None, x, self.res0(g))
        outs = [y]
        for k in range(1, n + 1):
            i = self._idx(k - 1)
            h = self.up_feat[i](g)
            y = _image_step(self.up_img[i], y, self.res[i](h))
            outs.append(y)
            if k < n:
                g = self.embed[self._idx(k)](h)
        return outs

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"levels={self._levels}, F={c.features}, D={c.depth}, R={c.recursions}, "
                f"share_weights={c.share_weights}, block={c.block}, upsample={c.upsample}, "
                f"image_branch={c.image_branch}")


def _image_step(up: nn.Module | None, y: Tensor, residual: Tensor) -> Tensor:
    """The image branch ``Up_i(y) + R`` (or ``y + R`` at level 0) in fp32, also under bf16/fp16
    autocast: bf16 resolves ~1/256 on [0.5, 1), as coarse as one 8-bit grey level, so only the
    residual convs (features) run in reduced precision and the image is never rounded to it."""
    with torch.autocast(y.device.type, enabled=False):
        y = y.float()
        return (up(y) if up is not None else y) + residual.float()


def build_model(cfg: ModelConfig, levels: int) -> LapSRN:
    """Build the LapSRN described by ``cfg`` with ``levels`` 2x levels (``DataConfig.levels``)."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(cfg).__name__}")
    return LapSRN(cfg, int(levels))


def apply_variant(model_cfg: ModelConfig, variant_cfg: VariantConfig) -> ModelConfig:
    """Return a new, validated ``ModelConfig`` with the non-None architecture fields of ``variant_cfg``
    applied (its ``loss`` weights are the trainer's: :func:`retina_sr.training.loss_spec`)."""
    overrides = {k: v for k, v in variant_cfg.model_dump(exclude={"loss"}).items() if v is not None}
    return ModelConfig.model_validate({**model_cfg.model_dump(), **overrides})
