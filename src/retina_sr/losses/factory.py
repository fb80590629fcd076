"""Build the perceptual loss from the validated configuration (``train.perceptual``)."""

from __future__ import annotations

from ..config import PerceptualPhase
from .vgg import PerceptualLoss, VGG16Features

__all__ = ["build_perceptual_loss"]


def build_perceptual_loss(cfg: PerceptualPhase, progress: bool = False) -> PerceptualLoss:
    """VGG16 perceptual loss (L1 on features, equal layer weights) from ``train.perceptual``.

    Uses ``vgg_weights``, ``vgg_layers`` and ``vgg_seed``; record ``loss.vgg.weights_description``
    with the run. Raises :class:`~retina_sr.losses.VGGWeightsError` when the weights cannot be
    obtained (e.g. ``imagenet`` offline without a cached file).
    """
    vgg = VGG16Features(cfg.vgg_weights, list(cfg.vgg_layers), seed=cfg.vgg_seed, progress=progress)
    return PerceptualLoss(vgg)
