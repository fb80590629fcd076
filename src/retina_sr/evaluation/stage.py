"""The ``evaluate`` stage end to end: run, write the reports and figures, log to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import paths
from ..config import Params
from .baselines import BASELINES
from .runner import EvaluationResult, run_evaluation
from .testset import ModelEntry, parse_model_specs

__all__ = ["evaluate_study"]

log = logging.getLogger(__name__)


def evaluate_study(
    params: Params,
    model_specs: list[str] | None = None,
    root: str | Path = ".",
    out_dir: str | Path | None = None,
    device: str | None = None,
    mlflow: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> tuple[EvaluationResult, dict[str, Path]]:
    """Evaluate every model (``model_specs``: ``PATH`` or ``NAME=PATH``; default: discovered under
    ``root/models``) and the baselines; write ``metrics.json``, ``results.csv``, ``summary.md``,
    ``plots/*.csv`` and ``figures/*.png`` under ``out_dir`` (default ``root/reports``); log one MLflow
    run per model unless ``mlflow=False``; ``workers`` processes score the images (see
    :func:`~retina_sr.evaluation.runner.run_evaluation`). Returns the result and the written files."""
    from .figures import panel_figure, panel_path, write_figures
    from .report import aggregate, write_reports

    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root / paths.REPORTS
    models: list[ModelEntry] | None = None
    if model_specs:
        models = parse_model_specs(model_specs)
        for e in models:
            if not e.path.is_absolute() and not e.path.is_file() and (root / e.path).is_file():
                e.path = root / e.path
    fig_dir = out / "figures"
    if fig_dir.is_dir():  # stale panels of an earlier run (other images/models) must not survive
        for old in fig_dir.glob("panel_*.png"):
            old.unlink()
    panels: list[Path] = []

    def on_panel(zoom: int, image_id: str, panel: dict) -> None:
        # the outputs hold the baselines (or "input") first, then the models in evaluation order
        model_names = [n for n in panel["outputs"] if n != "input" and n not in BASELINES]
        panels.append(panel_figure(panel, zoom, image_id, model_names, panel_path(fig_dir, image_id, zoom)))

    result = run_evaluation(params, models, root=root, device=device, progress=progress, on_panel=on_panel,
                            workers=workers)
    files = write_reports(result, out)
    agg = aggregate(result)
    figs = panels + write_figures(result, agg, fig_dir)
    if mlflow:
        from .tracking_log import log_evaluation

        log_evaluation(params, result, agg, figs, files, root=root)
    files["figures"] = out / "figures"
    return result, files
