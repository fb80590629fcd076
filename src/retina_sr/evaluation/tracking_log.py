"""MLflow: one run per evaluated model in ``params.mlflow.evaluation_experiment``.

Every run carries the same metric names keyed by zoom (``x4.psnr_y``, ``x4.vessel_dice``, ``x4.fps``)
so selecting the runs in the MLflow UI and pressing *Compare* shows the study's table; params name the
model, its phase/variant and checkpoint (path and SHA-256); the panel figures are artifacts.
Runs go through :func:`retina_sr.tracking.start_run` (store, experiment, common tags, study params).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..config import Params
from .report import model_order
from .runner import IMAGE_METRICS, SPEED_METRICS, EvaluationResult

__all__ = ["run_metrics", "log_evaluation"]


def run_metrics(agg: pd.DataFrame, model: str) -> dict[str, float]:
    """``{"x2.psnr_y": ..., "x2.fps": ...}`` for one model; non-finite values are left out."""
    out: dict[str, float] = {}
    for r in agg[agg["model"] == model].to_dict("records"):
        for k in (*IMAGE_METRICS, *SPEED_METRICS):
            v = r.get(k)
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                out[f"x{int(r['zoom'])}.{k}"] = f
    return out


def log_evaluation(
    params: Params, result: EvaluationResult, agg: pd.DataFrame, figures: list[Path] | None = None,
    reports: dict[str, Path] | None = None, root: str | Path = ".",
) -> dict[str, str]:
    """Log one run per model (baselines, ``input``, trained models, ``hr`` reference); returns ``{model: run_id}``."""
    from ..runtime import file_sha256
    from ..tracking import log_artifact, log_metrics, log_params, start_run

    entries = {e.name: e for e in result.models}
    panels = [p for p in (figures or []) if p.name.startswith("panel_")]
    summary_figs = [p for p in (figures or []) if not p.name.startswith("panel_")]
    run_ids: dict[str, str] = {}
    for name in model_order(agg["model"].unique()):
        e = entries.get(name)
        kind = "model" if e else ("reference" if name == "hr" else ("input" if name == "input" else "baseline"))
        extra = {
            "eval.model": name,
            "eval.kind": kind,
            "eval.phase": (e.phase if e else None) or "",
            "eval.variant": (e.variant if e else None) or "",
            "eval.checkpoint": str(e.path) if e else "",
            "eval.checkpoint_sha256": file_sha256(e.path) if e else "",
            "eval.device": result.device if e else ("CPU (OpenCV)" if kind == "baseline" else ""),
            "eval.test_images": result.test_description["count"],
        }
        tags = {"stage": "evaluate", "eval_model": name, "eval_kind": kind}
        with start_run(params, params.mlflow.evaluation_experiment, name, tags, root=root) as run:
            log_params(extra)
            log_metrics(run_metrics(agg, name))
            for p in panels:
                log_artifact(p, "panels")
            for p in summary_figs:
                log_artifact(p, "figures")
            for key in ("summary", "metrics"):
                if reports and key in reports:
                    log_artifact(reports[key], "reports")
            run_ids[name] = run.info.run_id
    return run_ids
