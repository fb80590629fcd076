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

from torch import Tensor, nn

from ..config import ModelConfig, VariantConfig
from .blocks import BicubicUp2x, EmbeddingBlock, PyramidNet, Upsample2x, conv3x3, image_step, init_conv_

__all__ = ["LapSRN", "build_model", "apply_variant", "describe_model", "arch_of", "arch_name", "model_summary",
           "ARCH_NAMES"]


class LapSRN(PyramidNet):
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

    def _idx(self, k: int) -> int:
        return 0 if self.cfg.share_weights else k

    def forward(self, x: Tensor, n_up: int | None = None) -> list[Tensor]:
        n, g, y = self._level0(x, n_up)
        outs = [y]
        for k in range(1, n + 1):
            i = self._idx(k - 1)
            h = self.up_feat[i](g)
            y = image_step(self.up_img[i], y, self.res[i](h))
            outs.append(y)
            if k < n:
                g = self.embed[self._idx(k)](h)
        return outs

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"levels={self._levels}, F={c.features}, D={c.depth}, R={c.recursions}, "
                f"share_weights={c.share_weights}, block={c.block}, upsample={c.upsample}, "
                f"image_branch={c.image_branch}")


def build_model(cfg: ModelConfig, levels: int) -> nn.Module:
    """Build the model described by ``cfg`` (``model.arch``: :class:`LapSRN` or
    :class:`~retina_sr.models.lrhead.LRHead`, one interface) with ``levels`` 2x levels (``DataConfig.levels``)."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(cfg).__name__}")
    if cfg.arch == "lrhead":
        from .lrhead import LRHead

        return LRHead(cfg, int(levels))
    return LapSRN(cfg, int(levels))


#: the display name of each ``model.arch``
ARCH_NAMES = {"lapsrn": "LapSRN", "lrhead": "LR head"}


def arch_of(m: dict) -> str:
    """The ``model.arch`` of a checkpoint's ``meta["model"]`` (a ``ModelConfig`` dump; checkpoints from before
    the key: ``lapsrn``)."""
    return str(m.get("arch", "lapsrn"))


def arch_name(m: dict) -> str:
    """The display name of a checkpoint's ``meta["model"]`` (``LapSRN``, ``LR head``, ``LR head direct``)."""
    return ARCH_NAMES[arch_of(m)] + (" direct" if m.get("direct") else "")


def model_summary(meta: dict) -> str:
    """A short line for a checkpoint's ``meta`` in listings and the bundled registry:
    ``"LR head F48D6, zooms 1-8, phase l1"``."""
    m = meta["model"]
    return f"{arch_name(m)} F{m['features']}D{m['depth']}, zooms 1-{2 ** int(meta['levels'])}, phase {meta.get('phase')}"


def describe_model(m: dict, levels: int | None = None) -> str:
    """One line naming the architecture of a checkpoint's ``meta["model"]`` (a ``ModelConfig`` dump) for
    model cards and listings: ``"LapSRN (Lai et al. 2017), F=16, D=3, ..."`` or ``"LR head (...)"``."""
    size = f"F={m['features']}, D={m['depth']}, R={m.get('recursions', 1)}, block={m.get('block', 'plain')}"
    zooms = "" if levels is None else f", levels={levels} (zooms 1 to {2 ** int(levels)})"
    if arch_of(m) == "lrhead":
        branch = "every zoom direct from the input grid" if m.get("direct") else "cascaded bicubic image branch"
        return f"LR head (trunk at the input resolution, sub-pixel residual per zoom, {branch}), {size}{zooms}"
    return (f"LapSRN (Lai et al. 2017), {size}, upsample={m['upsample']}, "
            f"image branch={m.get('image_branch', 'learned')}{zooms}")


def apply_variant(model_cfg: ModelConfig, variant_cfg: VariantConfig) -> ModelConfig:
    """Return a new, validated ``ModelConfig`` with the non-None architecture fields of ``variant_cfg``
    applied (its ``loss`` weights are the trainer's: :func:`retina_sr.training.loss_spec`)."""
    overrides = {k: v for k, v in variant_cfg.model_dump(exclude={"loss"}).items() if v is not None}
    return ModelConfig.model_validate({**model_cfg.model_dump(), **overrides})
