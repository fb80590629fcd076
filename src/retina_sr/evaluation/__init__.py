"""Evaluation of the study: image quality (PSNR/SSIM over the retina: the FOV less its rim), vessel preservation (Dice, clDice,
thinnest recovered calibre), upsampling artifacts and speed, for every model, baseline and zoom.

See ``docs/architecture.md`` ("Evaluation products") and :mod:`.metrics` for the conventions.
Names are loaded on first use (``lazy_loader``, scientific Python's SPEC 1), as in every package here: so
``retina-sr --help`` does not pay for scipy/pandas/skimage.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach(__name__, submod_attrs={
    "metrics": ["psnr", "psnr_pt", "ssim", "ssim_map", "rgb_to_y", "dice", "cldice"],
    "artifacts": ["checkerboard_score", "periodic_energy"],
    "baselines": ["BASELINES", "upsample"],
    "vessels": ["VesselSegmenter", "VesselResult", "eroded_fov", "calibre_recovery", "thinnest_recovered"],
    "testset": ["TestSet", "load_test_set", "ModelEntry", "discover_models", "parse_model_specs", "load_calibre_maps",
                "EvaluationInputError"],
    "runner": ["EvaluationResult", "run_evaluation", "evaluate_outputs", "make_reference", "run_model", "median_ms",
               "measure_speed", "IMAGE_METRICS", "SPEED_METRICS"],
    "report": ["aggregate", "write_reports", "summary_markdown", "metrics_dict"],
    "figures": ["write_figures", "panel_figure", "vessel_window"],
    "tracking_log": ["log_evaluation"],
    "stage": ["evaluate_study"],
})
