"""MLflow: one run per evaluated model in ``params.mlflow.evaluation_experiment``.

Every run carries the same metric names keyed by zoom (``x4.psnr_y``, ``x4.vessel_dice``, ``x4.fps``)
so selecting the runs in the MLflow UI and pressing *Compare* shows the study's table. Runs go through
:func:`retina_sr.tracking.start_run`: they are children of the study's parent run, which holds the
study's parameters; each evaluation run's own parameters are only what differs (``eval.model``,
``eval.kind``, ``eval.phase``, ``eval.variant``, ``eval.fast_path``), while the checkpoint path and
SHA-256, the device and the test-image count are tags. The test pairs (``test_x{s}.npz``) are the runs'
input datasets; the panels, figures and reports are logged once, on the study's parent run.
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
    """Log one run per model (baselines, ``input``, trained models and their fast paths, ``hr``
    reference); the figures and reports once on the study's parent run. Returns ``{model: run_id}``."""
    from .. import paths
    from ..runtime import file_sha256
    from ..tracking import log_artifact, log_dataset, log_metrics, set_tags, start_run, study_run_id

    root = Path(root)
    entries = {e.name: e for e in result.models}
    fast = dict(result.fast_paths)
    study_files = [(p, "panels" if p.name.startswith("panel_") else "figures") for p in (figures or [])]
    study_files += [(reports[k], "reports") for k in ("summary", "metrics") if reports and k in reports]
    test_sets = []
    for s in result.test_description.get("zooms", []):
        f = root / paths.patches_file("test", s)
        if f.is_file():
            test_sets.append((f, f"test_x{s}", file_sha256(f)[:16], s))
    sha = {n: file_sha256(e.path) for n, e in entries.items() if Path(e.path).is_file()}
    run_ids: dict[str, str] = {}
    for name in model_order(agg["model"].unique()):
        base = fast.get(name, name)
        e = entries.get(base)
        kind = "model" if e else ("reference" if name == "hr" else ("input" if name == "input" else "baseline"))
        own = {  # what differs between the evaluation runs (the compare view's parameters)
            "eval.model": name,
            "eval.kind": kind,
            "eval.phase": (e.phase if e else None) or "",
            "eval.variant": (e.variant if e else None) or "",
            "eval.fast_path": name in fast,
        }
        tags = {
            "stage": "evaluate", "eval_model": name, "eval_kind": kind,
            "eval.checkpoint": str(e.path) if e else None,
            "eval.checkpoint_sha256": sha.get(base) if e else None,
            "eval.device": (_device(agg, name) or result.device) if e else ("CPU (OpenCV)" if kind == "baseline" else None),
            "eval.test_images": result.test_description["count"],
            "eval.fast_path_of": base if name in fast else None,
        }
        with start_run(params, params.mlflow.evaluation_experiment, name, tags, root=root, own_params=own) as run:
            log_metrics(run_metrics(agg, name))
            for f, ds_name, digest, s in test_sets:
                log_dataset(f, ds_name, "evaluation", digest=digest,
                            tags={"zoom": str(s), "images": str(result.test_description["count"])})
            if study_files:  # once, on the study's parent run (its own run when it has none)
                parent = study_run_id()
                for f, where in study_files:
                    log_artifact(f, where, run_id=parent)
                set_tags({"eval.figures": "on the study run " + parent if parent else "on this run"})
                study_files = []
            run_ids[name] = run.info.run_id
    return run_ids


def _device(agg: pd.DataFrame, model: str) -> str | None:
    """The device the speed of ``model`` was measured on (its fast path says so too), if any."""
    if "device" not in agg:
        return None
    d = agg.loc[agg["model"] == model, "device"].dropna()
    return str(d.iloc[0]) if len(d) else None
