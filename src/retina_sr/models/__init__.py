"""Models: LapSRN and its modifications, the PatchGAN discriminator, checkpoints, artifact score.

See ``docs/architecture.md`` ("Model interface").
"""

from .blocks import EmbeddingBlock, ResidualBlock, Upsample2x, bilinear_kernel, icnr_
from .checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from .discriminator import Discriminator
from .lapsrn import LapSRN, apply_variant, build_model
from .spectrum import checkerboard_score, nyquist_energy_fraction

__all__ = [
    "LapSRN",
    "build_model",
    "apply_variant",
    "Discriminator",
    "checkerboard_score",
    "nyquist_energy_fraction",
    "save_model",
    "load_model",
    "read_checkpoint",
    "CheckpointError",
    "EmbeddingBlock",
    "ResidualBlock",
    "Upsample2x",
    "bilinear_kernel",
    "icnr_",
]
