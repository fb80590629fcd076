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
from .objectives import loss_overrides
from .validation import val_grid

if TYPE_CHECKING:
    from .trainer import PhasePlan, TrainingRun, TrainResult

__all__ = ["PRODUCTS", "PhaseTracker", "prepare_outputs", "finish", "write_plots", "write_metrics", "plot_rows",
           "checkpoint_meta", "HEADLINE_METRICS"]

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


#: what ``metrics.json`` keeps for ``dvc metrics show``: the headline of a stage, not its configuration
#: (that is in params.yaml and the MLflow run)
HEADLINE_METRICS = ("best_step", "val_psnr", "steps_per_s")
#: the ``metric`` column of ``plots.csv``
TRAIN_LOSS, VAL_PSNR = "train loss", "val PSNR (dB)"


def _zoom_values(row: dict[str, float], prefix: str, scales: list[int]) -> list[tuple[str, float]]:
    return [(f"x{s}", row[f"{prefix}x{s}"]) for s in scales
            if row.get(f"{prefix}x{s}") is not None and math.isfinite(row[f"{prefix}x{s}"])]


def plot_rows(history: dict[int, dict[str, float]], scales: list[int]) -> list[tuple[int, str, str, float]]:
    """The tidy rows of ``plots.csv``: ``(step, zoom, metric, value)``, one per logged value, no empty cell.

    The loss is per zoom when the history has ``loss_x<s>`` (the mean over the steps at that zoom since the
    last log): the zooms alternate every step and differ in loss, so one mixed series zigzags. A history
    without them (an older run) gives the mixed loss as zoom ``all``. Validation rows exist only at the
    validated steps, one per zoom."""
    out: list[tuple[int, str, str, float]] = []
    for step in sorted(history):
        row = history[step]
        per_zoom = _zoom_values(row, "loss_", scales)
        if per_zoom:
            out += [(step, z, TRAIN_LOSS, v) for z, v in per_zoom]
        elif row.get("loss") is not None and math.isfinite(row["loss"]):
            out.append((step, "all", TRAIN_LOSS, row["loss"]))
        out += [(step, z, VAL_PSNR, v) for z, v in _zoom_values(row, "val_psnr_", scales)]
    return out


def write_plots(path: Path, history: dict[int, dict[str, float]], scales: list[int]) -> None:
    """``plots.csv`` for ``dvc plots``: the tidy :func:`plot_rows` (``step,zoom,metric,value``); the
    template ``.dvc/plots/training.json`` draws one line per zoom, loss and validation PSNR apart. The other
    loss terms, the lr and the gradient norm are in the MLflow run."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "zoom", "metric", "value"])
        for step, zoom, metric, value in plot_rows(history, scales):
            w.writerow([step, zoom, metric, f"{value:.6g}"])
    tmp.replace(path)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """``metrics.json`` for ``dvc metrics show``: only :data:`HEADLINE_METRICS` of ``metrics``."""
    path.write_text(json.dumps({k: metrics[k] for k in HEADLINE_METRICS}, indent=2) + "\n")


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
        # the variant's own loss weights (train.variants.<v>.loss), used in its catch-up and own steps
        "loss_overrides": loss_overrides(params, plan.variant),
        "degradation": run.degrade_on,  # online on the "host" or the "device", or "stored" LR arrays
        "compiled": run.compiled,
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
    write_metrics(out / "metrics.json", metrics)
    write_plots(out / "plots.csv", run.history, run.scales)
    if tracker is not None:
        tracker.finish(best, val, metrics, out / "model.pt")
    return TrainResult(out_dir=out, best_step=run.best_step, val_psnr=dict(run.best_psnr),
                       final_val_psnr=dict(run.last_psnr), steps_per_s=steps_per_s, resumed_from=resumed_from,
                       run_id=run.run_id, init=run.init, metrics=metrics)


class PhaseTracker:
    """The MLflow run of one phase (a context manager), a child of the study's parent run: started (or
    resumed) with tags and only the phase's own parameters (phase, variant, the phase's settings, the
    variant's model changes), the processed data as its input dataset; then metrics, a validation image
    per validation step (:data:`VAL_IMAGE_CROPS` crops: the UI's step slider) and, at the end, the model
    as a registered MLflow pyfunc model. A failure inside the ``with`` marks the run failed."""

    #: validation crops (evenly spaced over ``val.npy``) drawn in the image logged at each validation step
    VAL_IMAGE_CROPS = 2

    def __init__(self, params: Params, plan: PhasePlan, run: TrainingRun, device: torch.device, data_hash: str,
                 resumed_from: int | None) -> None:
        self.params, self.plan, self.run, self.device = params, plan, run, device
        self.data_hash, self.resumed_from, self.root = data_hash, resumed_from, plan.root
        self._cm: Any = None
        self._val_crops: PatchSet | None = None

    def own_params(self) -> dict[str, Any]:
        """What differs between the training runs: phase, variant, the phase's settings (``train.<phase>``)
        and, for a variant, the model settings it changes (``model.<key>``) and the loss weights it sets
        for its catch-up and own steps (``loss.<key>``, ``train.variants.<variant>.loss``)."""
        plan = self.plan
        own: dict[str, Any] = {"phase": plan.phase, "variant": plan.variant or "", **plan.cfg.model_dump(mode="json")}
        study_model = self.params.model.model_dump(mode="json")
        for k, v in plan.model_cfg.model_dump(mode="json").items():
            if study_model.get(k) != v:
                own[f"model.{k}"] = v
        own.update({f"loss.{k}": v for k, v in loss_overrides(self.params, plan.variant).items()})
        return own

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
                                      run_id=self.run.run_id, root=self.root, own_params=self.own_params())
        active = self._cm.__enter__()
        self.run.run_id = active.info.run_id
        try:
            self._log_inputs(manifest)
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def _log_inputs(self, manifest: Path) -> None:
        """The processed data (its manifest as the table, the training patches' hash as the digest) and the
        training patches as the run's input datasets."""
        from .. import tracking

        if manifest.is_file():
            import pandas as pd

            tracking.log_dataset(manifest, "processed", "training", digest=self.data_hash[:16],
                                 table=pd.read_csv(manifest))
        train_file = self.root / paths.patches_file("train")
        if train_file.is_file():
            tracking.log_dataset(train_file, "train_patches", "training", digest=self.data_hash[:16])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(exc_type, exc, tb)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from .. import tracking

        tracking.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)
        if "val_psnr_mean" in metrics:  # a validation step: its image, at this step (the UI's step slider)
            tracking.log_image("validation", self.val_image(self.run.eval_model), step)

    def val_image(self, model: nn.Module) -> Any:
        """:data:`VAL_IMAGE_CROPS` validation crops side by side, each LR | bicubic | model | HR per zoom."""
        import numpy as np

        from .data import load_patches

        if self._val_crops is None:
            self._val_crops = load_patches(self.root / paths.patches_file("val"), self.run.scales,
                                           limit=self.VAL_IMAGE_CROPS)
        grids = [val_grid(model, self._val_crops, self.run.scales, self.device, index=i, amp=self.run.amp)
                 for i in range(len(self._val_crops))]
        sep = np.full((grids[0].shape[0], 6, 3), 255, np.uint8)
        return np.concatenate([x for g in grids for x in (g, sep)][:-1], axis=1)

    def finish(self, best: nn.Module, val: PatchSet, metrics: dict[str, Any], model_path: Path) -> None:
        from .. import tracking
        from ..data.io import write_image
        from ..inference.mlflow_model import log_enhancer_model

        summary = {"best_step": metrics["best_step"], "steps_per_s": metrics["steps_per_s"]}
        summary.update({f"best_val_psnr_{k}": v for k, v in metrics["val_psnr"].items()})
        tracking.log_metrics(summary)
        with tempfile.TemporaryDirectory() as tmp:
            grid = Path(tmp) / f"val_grid_{self.plan.phase}{'_' + self.plan.variant if self.plan.variant else ''}.png"
            write_image(grid, val_grid(best, val, self.run.scales, self.device, amp=self.run.amp))
            tracking.log_artifact(grid, "validation")
        tracking.log_artifact(model_path.parent / "metrics.json", "checkpoint")
        name = self.params.mlflow.registered_model
        _, version = log_enhancer_model(
            model_path, registered_model=name,
            tags={"phase": self.plan.phase, "variant": self.plan.variant, "study": self.params.study,
                  "dvc_stage": self.plan.stage, "best_step": metrics["best_step"],
                  "val_psnr_mean": metrics["val_psnr"].get("mean")},
            description=f"{self.plan.name} model of the {self.params.study} study (best validation step "
            f"{metrics['best_step']}): an MLflow pyfunc, predict(images, params={{'zoom': z}})")
        tracking.set_tags({"registered_model": f"models:/{name}/{version}"})
        log.info("[train %s] registered as models:/%s/%s", self.plan.name, name, version)
