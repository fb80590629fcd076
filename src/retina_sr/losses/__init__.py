"""Losses: pyramid Charbonnier, VGG16 perceptual, retinal saliency, vessel ridges, adversarial (vanilla / RaGAN).

Names are loaded on first use (``lazy_loader``, scientific Python's SPEC 1), as in every package here.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submod_attrs={
    "adversarial": ["GanType", "discriminator_loss", "generator_adversarial_loss"],
    "factory": ["build_perceptual_loss"],
    "periodic": ["PeriodicLoss", "periodic_mask"],
    "pixel": ["charbonnier", "downscale_to", "pyramid_charbonnier"],
    "ridge": ["RidgeLoss", "ridge_response"],
    "saliency": ["SaliencyLoss", "gaussian_blur", "intensity_contrast", "saliency_map", "texture_energy", "vesselness"],
    "vgg": ["VGG16_FILE", "VGG16_URL", "VGG_LAYERS", "PerceptualLoss", "VGG16Features", "VGGWeightsError"],
})
