"""The ``evaluate`` stage end to end: run, write the reports and figures, log to MLflow.

:func:`evaluate` is the stage as the pipeline runs it (``run(params, root, *, threads, ...)``, see
:mod:`retina_sr.stages`); :func:`evaluate_study` is the same as a library call.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .. import paths
from ..config import Params

if TYPE_CHECKING:  # the evaluation's heavy modules are imported when it runs, not by `retina-sr --help`
    from .runner import EvaluationResult
    from .testset import ModelEntry

__all__ = ["add_arguments", "evaluate", "evaluate_study"]

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
    ``root/models``) and the baselines; write ``metrics.json`` (the headline for ``dvc metrics show``),
    ``results.csv``, ``summary.md``, ``plots/*.csv`` (for ``dvc plots``) and ``figures/*.png`` under
    ``out_dir`` (default ``root/reports``); log one MLflow run per model unless ``mlflow=False``;
    ``workers`` processes score the images (see
    :func:`~retina_sr.evaluation.runner.run_evaluation`). Returns the result and the written files."""
    from .baselines import BASELINES
    from .figures import panel_figure, panel_path, write_figures
    from .report import aggregate, write_reports
    from .runner import run_evaluation
    from .testset import parse_model_specs

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluate stage's own options (the common ``--params``/``--threads``/``--root``:
    :func:`retina_sr.runtime.add_stage_arguments`)."""
    p.add_argument("--models", nargs="+", default=None, metavar="[NAME=]PATH",
                   help="checkpoints to evaluate (default: every phase's models/<phase>/model.pt and "
                        "models/<phase>/<variant>/model.pt)")
    p.add_argument("--out", default=None, help="output folder (default: <root>/reports)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="device for the models (default: params train.loop.device)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes scoring the images (default: the --threads budget)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log MLflow runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def evaluate(params: Params, root: Path, *, threads: int, models: list[str] | None = None, out: str | None = None,
             device: str | None = None, workers: int | None = None, no_mlflow: bool = False,
             quiet: bool = False) -> str:
    """Run :func:`evaluate_study` (``workers`` default: the thread budget); returns the summary."""
    workers = workers if workers is not None else threads
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    result, files = evaluate_study(params, models, root=root, out_dir=out, device=device, mlflow=not no_mlflow,
                                   progress=not quiet, workers=workers)
    lines = [f"evaluated {len(result.models)} model(s) + baselines on {result.test_description['count']} test "
             f"image(s) at zooms {result.test_description['zooms']} ({result.device})"]
    lines += [f"  {k}: {p}" for k, p in files.items()]
    return "\n".join(lines)
