"""Data stages: download (demo phantoms, local folders, Kaggle EyePACS), preprocess (FOV crop,
resize, split) and patches (degradation model, training crops, test pairs); :mod:`.stage` runs them.

Names are loaded on first use (``lazy_loader``, scientific Python's SPEC 1), as in every package here.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submod_attrs={
    "download": ["check_inputs", "run_download"],
    "io": ["IMAGE_EXTENSIONS", "ImageReadError", "OutputConflictError", "link_file", "read_image", "read_mask",
           "safe_id", "write_image"],
    "patches": ["degrade", "run_patches"],
    "phantom": ["Phantom", "generate_phantom"],
    "preprocess": ["TooFewImagesError", "preprocess_dataset"],
})
