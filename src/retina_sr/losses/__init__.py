"""Losses: pyramid Charbonnier, VGG16 perceptual, retinal saliency, adversarial (vanilla / RaGAN)."""

from .adversarial import GanType, discriminator_loss, generator_adversarial_loss
from .factory import build_perceptual_loss
from .pixel import charbonnier, downscale_to, pyramid_charbonnier
from .ridge import RidgeLoss, ridge_response
from .saliency import SaliencyLoss, gaussian_blur, intensity_contrast, saliency_map, texture_energy, vesselness
from .vgg import VGG16_FILE, VGG16_URL, VGG_LAYERS, PerceptualLoss, VGG16Features, VGGWeightsError

__all__ = [
    "charbonnier",
    "downscale_to",
    "pyramid_charbonnier",
    "RidgeLoss",
    "ridge_response",
    "VGG16Features",
    "PerceptualLoss",
    "VGGWeightsError",
    "VGG_LAYERS",
    "VGG16_URL",
    "VGG16_FILE",
    "saliency_map",
    "SaliencyLoss",
    "intensity_contrast",
    "texture_energy",
    "vesselness",
    "gaussian_blur",
    "build_perceptual_loss",
    "GanType",
    "generator_adversarial_loss",
    "discriminator_loss",
]
