"""PatchGAN discriminator (Isola et al., "Image-to-Image Translation with Conditional Adversarial
Networks", CVPR 2017) with optional spectral normalisation (Miyato et al., ICLR 2018).

Strided 4x4 convs + LeakyReLU(0.2) halve the resolution ``n_layers`` times (channels F, 2F, 4F,
... capped at 8F), then a stride-1 4x4 conv and a 4x4 conv to one channel give a map of logits,
one per overlapping receptive-field patch. No batch norm: with spectral norm the discriminator is
Lipschitz-controlled, and without it the relativistic loss (ESRGAN) trains fine unnormalised.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..config import DiscriminatorConfig

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """PatchGAN: (N, 3, H, W) in [0, 1] -> (N, 1, h, w) logits (no sigmoid)."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        f = cfg.features
        layers: list[nn.Module] = []
        cin = 3
        for i in range(cfg.n_layers):
            cout = min(f * 2**i, 8 * f)
            layers += [sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=False)]
            cin = cout
        cout = min(cin * 2, 8 * f)
        layers += [sn(nn.Conv2d(cin, cout, 4, stride=1, padding=1)), nn.LeakyReLU(0.2, inplace=False)]
        layers += [sn(nn.Conv2d(cout, 1, 4, stride=1, padding=1))]
        self.body = nn.Sequential(*layers)

    @property
    def min_size(self) -> int:
        """Smallest input side with at least one logit: ``n_layers`` halvings, then two 4x4 convs (-1 each)."""
        return 3 * 2**self.cfg.n_layers

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"PatchGAN input {tuple(x.shape[-2:])} is smaller than {self.min_size} px, the least its "
                f"{self.cfg.n_layers} strided layers need: raise data.patches.crop or lower "
                "train.adversarial.discriminator.n_layers"
            )
        return self.body(x * 2.0 - 1.0)
