"""Adversarial losses on discriminator logits: vanilla GAN and relativistic average GAN.

- ``vanilla``: the non-saturating GAN of Goodfellow et al. 2014, as binary cross-entropy with
  logits (SRGAN, Ledig et al. 2017).
- ``relativistic``: RaGAN (Jolicoeur-Martineau, "The relativistic discriminator: a key element
  missing from standard GAN", ICLR 2019), as used by ESRGAN (Wang et al., ECCVW 2018, Eqs. 1-2):
  ``D_Ra(a, b) = sigmoid(C(a) - mean C(b))``;
  ``L_D = -E[log D_Ra(x_r, x_f)] - E[log(1 - D_Ra(x_f, x_r))]`` and the generator loss is the
  symmetric one, so it needs the real logits too (detached from the discriminator).
Both are averaged over the two terms, as ESRGAN's reference code does.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["GanType", "generator_adversarial_loss", "discriminator_loss"]

GanType = Literal["vanilla", "relativistic"]


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _check(gan_type: str) -> None:
    if gan_type not in ("vanilla", "relativistic"):
        raise ValueError(f"unknown gan_type {gan_type!r}: use 'vanilla' or 'relativistic'")


def generator_adversarial_loss(d_fake: Tensor, d_real: Tensor | None = None, gan_type: GanType = "relativistic") -> Tensor:
    """Generator's adversarial loss from the discriminator logits of its outputs (``d_fake``).

    ``relativistic`` needs ``d_real`` (logits of the real images); it is detached here so the
    generator step never back-propagates into the discriminator's real branch.
    """
    _check(gan_type)
    if gan_type == "vanilla":
        return _bce(d_fake, 1.0)
    if d_real is None:
        raise ValueError("the relativistic generator loss needs d_real (discriminator logits of the real images)")
    d_real = d_real.detach()
    return 0.5 * (_bce(d_real - d_fake.mean(), 0.0) + _bce(d_fake - d_real.mean(), 1.0))


def discriminator_loss(d_real: Tensor, d_fake: Tensor, gan_type: GanType = "relativistic") -> Tensor:
    """Discriminator loss; ``d_fake`` should come from generator outputs detached from the generator."""
    _check(gan_type)
    if gan_type == "vanilla":
        return 0.5 * (_bce(d_real, 1.0) + _bce(d_fake, 0.0))
    return 0.5 * (_bce(d_real - d_fake.mean(), 1.0) + _bce(d_fake - d_real.mean(), 0.0))
