"""Training of every phase (l1, perceptual, adversarial, modified variants) with resume and tracking.

See :mod:`retina_sr.training.trainer` for the step, :mod:`.objectives` for the loss sets.
"""

from .data import BatchSampler, PatchDataError, PatchSet, load_patches, to_tensor
from .ema import ModelEMA
from .objectives import LossSpec, PhaseLosses, loss_spec
from .trainer import (
    PHASES,
    PhasePlan,
    TrainResult,
    build_optimizer,
    build_scheduler,
    dvc_stage_name,
    init_weights,
    plan_phase,
    train_phase,
)
from .validation import psnr, val_grid, validate

__all__ = [
    "PHASES",
    "PhasePlan",
    "TrainResult",
    "train_phase",
    "plan_phase",
    "init_weights",
    "build_optimizer",
    "build_scheduler",
    "dvc_stage_name",
    "ModelEMA",
    "PhaseLosses",
    "LossSpec",
    "loss_spec",
    "BatchSampler",
    "PatchSet",
    "PatchDataError",
    "load_patches",
    "to_tensor",
    "psnr",
    "validate",
    "val_grid",
]
