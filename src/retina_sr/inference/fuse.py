"""Exact rewrites of a LapSRN (and of the LR head's image branch) for ONNX Runtime on the CPU: 2x upsampling
as four phases.

ONNX Runtime's CPU kernels for ``ConvTranspose`` and cubic ``Resize`` are generic and slow (at
1920x1080 x4 they took 70 % of the F16 D3 model's time), while its ``Conv`` is a blocked, fused
(conv + LeakyReLU) kernel. Every 2x upsampler of LapSRN is a sum over four output phases (the
pixel positions (even/odd row, even/odd column)), each a small conv on the coarse grid
(Shi et al., "Is the deconvolution layer the same as a convolutional layer?", arXiv:1609.07009):

* the 4x4 stride-2 transposed conv (padding 1) is a 3x3 conv with ``4 C`` outputs followed by a
  pixel shuffle (each phase uses a 2x2 subset of the 4x4 kernel); so is a nearest 2x resize followed by a
  3x3 conv (each phase sums the fine taps that fall on one coarse pixel);
* 2x bicubic interpolation (Keys a = -0.75, half-pixel centres, edge replicated, what
  ``F.interpolate`` and OpenCV's ``INTER_CUBIC`` do) is a depthwise 5x5 conv with four phase
  kernels on the edge-padded image, followed by a pixel shuffle;
* at the last level the residual conv (3x3 on the fine grid) is a 3x3 conv on the phase channels,
  so the whole top level, features, residual and image branch, runs on the coarse grid and only
  the 3-channel result is shuffled: no full-resolution feature map exists at all.

The rewrites are exact (the same sums, differently ordered: max abs difference ~1e-6);
:func:`~retina_sr.inference.onnx.export_onnx` checks them against the original model on an input of
another size and falls back to the plain graph if the check fails. Upsamplers without a phase form
(the learned image branch of ``resize_conv``: bilinear resize + conv) are kept as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.blocks import bicubic_phases

if TYPE_CHECKING:
    from ..models.lapsrn import LapSRN

__all__ = ["PhaseBicubic", "PhaseConvUp", "phase_conv3x3", "PhaseLapSRN", "phase_form", "phase_lrhead"]

# deconv (k=4, s=2, p=1): output phase r reads coarse offsets d in {-1, 0, 1} with kernel tap t
_DECONV_TAPS = {0: {0: 3, 1: 1}, 1: {1: 2, 2: 0}}  # phase -> {3x3 index (d + 1): 4x4 tap}


class PhaseBicubic(nn.Module):
    """2x bicubic upsampling of ``channels`` channels as four 5x5 phase kernels (module doc)."""

    weight: Tensor  # a buffer (register_buffer)

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("weight", bicubic_phases(2, channels))
        self.channels = channels

    def phases(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.weight, groups=self.channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.phases(x), 2)


class PhaseConvUp(nn.Module):
    """``act(pixel_shuffle(conv(x)))`` with ``conv`` producing the four phases of each channel."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = conv, act

    @classmethod
    def from_deconv(cls, deconv: nn.ConvTranspose2d, act: nn.Module) -> PhaseConvUp:
        if (deconv.kernel_size, deconv.stride, deconv.padding) != ((4, 4), (2, 2), (1, 1)):
            raise ValueError(f"only 4x4 stride-2 padding-1 transposed convs have this phase form, got {deconv}")
        w = deconv.weight.detach()  # (cin, cout, 4, 4)
        cin, cout = w.shape[:2]
        k = torch.zeros(cout, 2, 2, cin, 3, 3)
        for ry, rows in _DECONV_TAPS.items():
            for rx, cols in _DECONV_TAPS.items():
                for iy, ty in rows.items():
                    for ix, tx in cols.items():
                        k[:, ry, rx, :, iy, ix] = w[:, :, ty, tx].t()
        conv = nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=deconv.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(k.reshape(4 * cout, cin, 3, 3))
            if deconv.bias is not None and conv.bias is not None:  # conv has a bias exactly when deconv has
                conv.bias.copy_(deconv.bias.detach().repeat_interleave(4))
        return cls(conv, act)

    @classmethod
    def from_resize_conv(cls, conv: nn.Conv2d, act: nn.Module) -> PhaseConvUp:
        """Nearest 2x resize then a 3x3 conv (padding 1): the nearest resize puts the same coarse pixel in
        all four phases, so this is :func:`phase_conv3x3` of ``conv`` with its four source phases summed."""
        try:
            fine = phase_conv3x3(conv)
        except ValueError:
            raise ValueError(f"only 3x3 padding-1 convs after a nearest 2x resize have this phase form, got {conv}") from None
        cout, cin = conv.weight.shape[:2]
        out = nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=fine.bias is not None)
        with torch.no_grad():
            out.weight.copy_(fine.weight.view(4 * cout, cin, 4, 3, 3).sum(dim=2))
            if fine.bias is not None and out.bias is not None:
                out.bias.copy_(fine.bias)
        return cls(out, act)

    def phases(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))  # an elementwise act commutes with the shuffle

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.phases(x), 2)


def phase_conv3x3(conv: nn.Conv2d) -> nn.Conv2d:
    """The fine-grid 3x3 conv ``conv`` (padding 1) as a coarse-grid 3x3 conv on phase channels:
    ``pixel_shuffle(result(z)) == conv(pixel_shuffle(z))``, zero padding included."""
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1):
        raise ValueError(f"phase_conv3x3 needs a 3x3 conv with padding 1, got {conv}")
    w = conv.weight.detach()
    cout, cin = w.shape[:2]
    k = torch.zeros(cout, 2, 2, cin, 2, 2, 3, 3)
    for ry in (0, 1):
        for rx in (0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    sy, sx = ry + dy, rx + dx  # fine offset -> (source phase, coarse offset)
                    k[:, ry, rx, :, sy % 2, sx % 2, sy // 2 + 1, sx // 2 + 1] += w[:, :, dy + 1, dx + 1]
    out = nn.Conv2d(4 * cin, 4 * cout, 3, padding=1, bias=conv.bias is not None)
    with torch.no_grad():
        out.weight.copy_(k.reshape(4 * cout, 4 * cin, 3, 3))
        if conv.bias is not None and out.bias is not None:  # out has a bias exactly when conv has
            out.bias.copy_(conv.bias.detach().repeat_interleave(4))
    return out


_Phased: TypeAlias = PhaseBicubic | PhaseConvUp  # upsamplers with a phases() form


def phase_form(up: Any) -> nn.Module:
    """The phase form of a LapSRN 2x upsampler, or ``up`` itself when it has none."""
    kind = getattr(up, "kind", None)
    if kind is None and type(up).__name__ == "BicubicUp2x":
        return PhaseBicubic(3)
    if kind == "deconv":
        return PhaseConvUp.from_deconv(up.op, up.act)
    if kind == "subpixel":
        return PhaseConvUp(up.op[0], up.act)
    if kind == "resize_conv" and not up.image:  # nearest resize (features); the image branch's is bilinear
        return PhaseConvUp.from_resize_conv(up.op, up.act)
    return up


class PhaseLapSRN(nn.Module):
    """The ``2**n_up`` output of a LapSRN with phase-form upsamplers and a coarse-grid top level.

    Computes what ``LevelOutput(model, n_up)`` computes (fp32 inference only; module doc).
    """

    def __init__(self, model: nn.Module, n_up: int) -> None:
        super().__init__()
        model = cast("LapSRN", model)  # its attributes; nn.Module's own __getattr__ types them loosely
        self.n_up = int(n_up)
        shared = bool(model.cfg.share_weights)

        def idx(k: int) -> int:
            return 0 if shared else k

        self.head, self.act, self.embed0, self.res0 = model.head, model.act, model.embed[0], model.res0
        n = self.n_up
        self.feat = nn.ModuleList([phase_form(model.up_feat[idx(k)]) for k in range(n)])
        self.img = nn.ModuleList([phase_form(model.up_img[idx(k)]) for k in range(n)])
        self.res = nn.ModuleList([model.res[idx(k)] for k in range(n)])
        self.embed = nn.ModuleList([model.embed[idx(k + 1)] for k in range(max(0, n - 1))])
        top = n > 0 and all(hasattr(m, "phases") for m in (self.feat[-1], self.img[-1]))
        self.top_res = phase_conv3x3(cast(nn.Conv2d, self.res[-1])) if top else None

    def forward(self, x: Tensor) -> Tensor:
        g = self.embed0(self.act(self.head(x)))
        y = x + self.res0(g)
        n = self.n_up
        last = n - 1 if self.top_res is not None else n
        for k in range(last):
            h = self.feat[k](g)
            y = self.img[k](y) + self.res[k](h)
            if k < n - 1:
                g = self.embed[k](h)
        if self.top_res is not None:
            feat, img = cast(_Phased, self.feat[-1]), cast(_Phased, self.img[-1])  # `top`: both have phases()
            z = feat.phases(g)
            y = F.pixel_shuffle(img.phases(y) + self.top_res(z), 2)
        return y


def phase_lrhead(model: nn.Module) -> nn.Module:
    """A copy of an :class:`~retina_sr.models.lrhead.LRHead` whose bicubic image branch is :class:`PhaseBicubic`
    (its only upsampler; the sub-pixel residuals are already convs on the input grid). At 480x270 -> 1920x1080
    ONNX Runtime took 568 ms for the two cubic ``Resize`` ops of the plain graph and 25 ms for their phase form.
    A direct head (``model.direct``) is on the input grid already: its folded image convs become constants
    (:meth:`~retina_sr.models.lrhead.DirectUp.fixed`) instead of being recomputed from the refinements per call,
    and each residual's 1x1 conv and phase hold one 3x3 conv (:meth:`~retina_sr.models.lrhead.PhaseResidual.fixed`)."""
    import copy

    fused = copy.deepcopy(model)
    ups = cast(Any, model).up_img
    if getattr(model, "direct", False):
        fused.up_img = nn.ModuleList([up.fixed() for up in ups])
        fused.res = nn.ModuleList([res.fixed() for res in cast(Any, model).res])
    else:
        fused.up_img = nn.ModuleList([PhaseBicubic(3) for _ in ups])
    return fused
