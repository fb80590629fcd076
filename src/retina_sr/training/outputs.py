"""What a training stage leaves behind: ``model.pt``, ``metrics.json``, ``plots.csv`` and its MLflow run.

The products are written only when the stage finishes (:func:`finish`), so a stage killed mid-run leaves
no file that looks like a finished model; the resume state lives apart in ``models/.resume``
(:func:`retina_sr.paths.resume_file`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import paths
from ..config import Params
from ..runtime import device_name, file_sha256, git_commit
from .data import PatchSet
from .validation import val_grid

if TYPE_CHECKING:
    from .trainer import PhasePlan, TrainingRun, TrainResult

__all__ = ["PRODUCTS", "PhaseTracker", "prepare_outputs", "finish", "write_plots", "checkpoint_meta"]

log = logging.getLogger(__name__)

#: the files of a finished stage, in ``models/<phase>[/<variant>]/``
PRODUCTS = ("model.pt", "metrics.json", "plots.csv")


def prepare_outputs(plan: PhasePlan) -> Path:
    """Create the stage's folders, remove its previous products and orphan ``*.tmp`` files of a killed
    write; returns the resume-state file ``models/.resume/<phase>[/<variant>]/last.pt``."""
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    last_path = plan.root / paths.resume_file(plan.phase, plan.variant)
    last_path.parent.mkdir(parents=True, exist_ok=True)
    for name in PRODUCTS:
        (out / name).unlink(missing_ok=True)
    for d in (out, last_path.parent):
        for tmp in d.glob("*.tmp"):
            tmp.unlink()
    return last_path


def write_plots(path: Path, history: dict[int, dict[str, float]], scales: list[int]) -> None:
    """``plots.csv``: one row per logged step; loss terms, lr, val PSNR per zoom (empty when not validated)."""
    keys: list[str] = []
    for row in history.values():
        for k in row:
            if k not in keys:
                keys.append(k)
    val_cols = [f"val_psnr_x{s}" for s in scales] + ["val_psnr_mean"]
    first = ["loss", "pixel", "ridge", "perceptual", "saliency", "adv_g", "d", "d_acc", "grad_norm", "lr"]
    cols = ["step"] + [k for k in first if k in keys] + sorted(k for k in keys if k not in first and k not in val_cols) \
        + [k for k in val_cols if k in keys]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for step in sorted(history):
            row = history[step]
            w.writerow([step] + [("" if row.get(c) is None else f"{row[c]:.6g}") for c in cols[1:]])
    tmp.replace(path)


def checkpoint_meta(params: Params, plan: PhasePlan, run: TrainingRun, data_hash: str) -> dict[str, Any]:
    """What ``model.pt`` records about how it was made (read by evaluation, inference and the registry)."""
    return {
        "model": plan.model_cfg.model_dump(mode="json"),
        "levels": run.levels,
        "scales": list(params.data.scales),
        "phase": plan.phase,
        "variant": plan.variant,
        "step": run.best_step,
        "study": params.study,
        "data_hash": data_hash,
        "ema": run.ema is not None,
        "val_psnr": run.best_psnr.get("mean"),
        "val_psnr_per_zoom": {k: v for k, v in run.best_psnr.items() if k != "mean"},
        "init_from": None if run.init is None else {k: run.init[k] for k in ("path", "sha256", "loaded", "skipped", "unused")},
        "pretrain_steps": run.pretrain,
        "steps": run.total_steps,
        "seed": params.seed,
        "params_digest": params.digest(),
        "git_commit": git_commit(plan.root),
    }


def finish(params: Params, plan: PhasePlan, run: TrainingRun, val: PatchSet, data_hash: str,
           resumed_from: int | None, tracker: PhaseTracker | None) -> TrainResult:
    """Write model.pt (from the best weights), metrics.json, plots.csv; log them to the run."""
    from ..models.checkpoint import save_model
    from .trainer import TrainResult, module_with

    out = plan.out_dir
    if run.best_state is None:  # cannot happen: the last step always validates
        raise RuntimeError(f"[train {plan.name}] no validated weights to save")
    best = module_with(run.eval_model, {k: v.to(run.device) for k, v in run.best_state.items()})
    save_model(out / "model.pt", best, checkpoint_meta(params, plan, run, data_hash))
    steps_per_s = run.step / run.train_seconds if run.train_seconds > 0 else float("nan")
    metrics: dict[str, Any] = {
        "best_step": run.best_step,
        "val_psnr": {k: round(v, 4) for k, v in run.best_psnr.items()},
        "final_val_psnr": {k: round(v, 4) for k, v in run.last_psnr.items()},
        "steps": run.step,
        "steps_per_s": round(steps_per_s, 4),
        "batch_size": params.train.loop.batch_size,
        "crop": run.train_data.crop,
    }
    if run.init is not None:
        metrics["init_loaded"] = run.init["loaded"]
        metrics["init_skipped"] = run.init["skipped"]
        metrics["pretrain_steps"] = run.pretrain
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_plots(out / "plots.csv", run.history, run.scales)
    if tracker is not None:
        tracker.finish(best, val, metrics, out / "model.pt")
    return TrainResult(out_dir=out, best_step=run.best_step, val_psnr=dict(run.best_psnr),
                       final_val_psnr=dict(run.last_psnr), steps_per_s=steps_per_s, resumed_from=resumed_from,
                       run_id=run.run_id, init=run.init, metrics=metrics)


class PhaseTracker:
    """The MLflow run of one phase (a context manager): started (or resumed) with tags, then metrics
    and artifacts; a failure inside the ``with`` marks the run failed."""

    def __init__(self, params: Params, plan: PhasePlan, run: TrainingRun, device: torch.device, data_hash: str,
                 resumed_from: int | None) -> None:
        self.params, self.plan, self.run, self.device = params, plan, run, device
        self.data_hash, self.resumed_from, self.root = data_hash, resumed_from, plan.root
        self._cm: Any = None

    def __enter__(self) -> PhaseTracker:
        from .. import tracking

        manifest = self.root / paths.PROCESSED_MANIFEST
        tags = {
            "phase": self.plan.phase,
            "variant": self.plan.variant,
            "dvc_stage": self.plan.stage,
            "data_hash": self.data_hash,
            "data_manifest_sha256": file_sha256(manifest) if manifest.is_file() else "absent",
            "device": device_name(self.device),
            "vgg_weights": self.run.losses.vgg_description,
            "resumed_from_step": self.resumed_from,
        }
        if self.run.init is not None:
            tags.update({"init_from": self.run.init["path"], "init_sha256": self.run.init["sha256"],
                         "init_loaded": self.run.init["loaded"], "init_skipped": self.run.init["skipped"]})
        run_name = f"train_{self.plan.phase}" + (f"_{self.plan.variant}" if self.plan.variant else "")
        self._cm = tracking.start_run(self.params, self.params.mlflow.experiment, run_name, tags,
                                      run_id=self.run.run_id, root=self.root)
        active = self._cm.__enter__()
        self.run.run_id = active.info.run_id
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(exc_type, exc, tb)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from .. import tracking

        tracking.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)

    def finish(self, best: nn.Module, val: PatchSet, metrics: dict[str, Any], model_path: Path) -> None:
        from .. import tracking
        from ..data.io import write_image

        summary = {"best_step": metrics["best_step"], "steps_per_s": metrics["steps_per_s"]}
        summary.update({f"best_val_psnr_{k}": v for k, v in metrics["val_psnr"].items()})
        tracking.log_metrics(summary)
        with tempfile.TemporaryDirectory() as tmp:
            grid = Path(tmp) / f"val_grid_{self.plan.phase}{'_' + self.plan.variant if self.plan.variant else ''}.png"
            write_image(grid, val_grid(best, val, self.run.scales, self.device, amp=self.run.amp))
            tracking.log_artifact(grid, "validation")
        tracking.log_artifact(model_path, "checkpoint")
        tracking.log_artifact(model_path.parent / "metrics.json", "checkpoint")
        name = self.params.mlflow.registered_model
        version = tracking.register_model(
            name, "checkpoint", {"phase": self.plan.phase, "variant": self.plan.variant, "study": self.params.study,
                                 "dvc_stage": self.plan.stage},
            f"{self.plan.name} model of the {self.params.study} study (best validation step {metrics['best_step']})")
        tracking.set_tags({"registered_model": f"models:/{name}/{version}"})
        log.info("[train %s] registered as models:/%s/%s", self.plan.name, name, version)
