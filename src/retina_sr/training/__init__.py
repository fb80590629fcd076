"""Training of every phase of :data:`retina_sr.phases.PHASES` with resume and tracking.

See :mod:`retina_sr.training.trainer` for the step and the boundary work, :mod:`.objectives` for the
loss sets, :mod:`.outputs` for the products and the MLflow run, :mod:`.stage` for the pipeline stage.
Names are loaded on first use (``lazy_loader``, scientific Python's SPEC 1), as in every package here.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submod_attrs={
    "data": ["BatchSampler", "PatchDataError", "PatchSet", "load_patches"],
    "ema": ["ModelEMA"],
    "objectives": ["LossSpec", "PhaseLosses", "loss_spec", "loss_overrides"],
    "trainer": ["PhasePlan", "TrainingRun", "TrainResult", "build_optimizer", "build_scheduler", "init_weights",
                "plan_phase", "stage_fingerprint", "train_phase"],
    "validation": ["val_grid", "validate", "retina_masks"],
})
