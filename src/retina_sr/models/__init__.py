"""Models: LapSRN and its modifications, the PatchGAN discriminator, checkpoints, the input tensor, a
Nyquist-energy probe. See ``docs/architecture.md`` ("Model interface").

Names are loaded on first use (``lazy_loader``, scientific Python's SPEC 1), as in every package here.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submod_attrs={
    "blocks": ["EmbeddingBlock", "ResidualBlock", "Upsample2x", "bilinear_kernel", "icnr_"],
    "checkpoint": ["CheckpointError", "load_model", "read_checkpoint", "save_model"],
    "discriminator": ["Discriminator"],
    "lapsrn": ["ARCH_NAMES", "LapSRN", "apply_variant", "arch_name", "arch_of", "build_model", "describe_model",
               "model_summary"],
    "lrhead": ["HoldFilter", "LRHead"],
    "spectrum": ["nyquist_energy_fraction", "nyquist_score"],
    "tensors": ["to_tensor"],
})
