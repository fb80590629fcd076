"""Evaluation of the study: image quality (PSNR/SSIM in the FOV), vessel preservation (Dice, clDice,
thinnest recovered calibre), upsampling artifacts and speed, for every model, baseline and zoom.

See ``docs/architecture.md`` ("Evaluation products") and :mod:`.metrics` for the conventions.
Names are imported lazily (PEP 562) so ``retina-sr --help`` does not pay for scipy/pandas/skimage.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "metrics": ("psnr", "ssim", "ssim_map", "rgb_to_y", "dice", "cldice"),
    "artifacts": ("checkerboard_score", "periodic_energy"),
    "baselines": ("BASELINES", "upsample"),
    "vessels": ("VesselSegmenter", "VesselResult", "eroded_fov", "calibre_recovery", "thinnest_recovered"),
    "testset": ("TestSet", "load_test_set", "ModelEntry", "discover_models", "parse_model_specs",
                "load_calibre_maps", "EvaluationInputError"),
    "runner": ("EvaluationResult", "run_evaluation", "evaluate_outputs", "make_reference", "run_model",
               "time_callable", "IMAGE_METRICS", "SPEED_METRICS"),
    "report": ("aggregate", "write_reports", "summary_markdown", "metrics_dict"),
    "figures": ("write_figures", "panel_figure", "vessel_window"),
    "tracking_log": ("log_evaluation",),
    "stage": ("evaluate_study",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
