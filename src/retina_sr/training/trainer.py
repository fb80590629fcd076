"""One trainer for every phase of the study (``l1 -> perceptual -> adversarial -> modified@variant``).

Per step (Lai et al. 2017, LapSRN; the loss set of each phase is in :mod:`.objectives`):

1. the zoom cycles deterministically through ``data.scales`` (``scales[step % len(scales)]``);
2. a batch of ``train.batch_size`` patches is drawn by the resumable :class:`~.data.BatchSampler`;
3. the model sees ``lr_x{s}`` with ``n_up = log2(s)`` and returns every pyramid level;
4. the generator loss is back-propagated, gradients clipped to ``train.grad_clip`` (global norm),
   Adam (Kingma & Ba 2015, betas 0.9/0.999) steps, the schedule (``train.lr_schedule``: cosine to
   lr/100, or halving every quarter of the steps) steps;
5. adversarial phases then update the discriminator (Adam with ``lr_d``, same schedule/clipping);
6. the EMA of the weights (``train.ema_decay``) is updated.

Every ``val_every`` steps (and at the end) PSNR per zoom is measured on ``val.npz`` with the EMA
weights (raw weights when EMA is off); the best mean PSNR gives ``model.pt``. Every
``checkpoint_every`` steps (and at the end) ``last.pt`` stores the full resume state, so a stage
killed with SIGKILL and started again continues from there and ends with the same weights as an
uninterrupted run (bit-exact on CPU). A ``last.pt`` written for another configuration (different
fingerprint: phase settings, model, data hash, init checkpoint) is ignored and training starts over.

Device: ``train.device`` (``auto``: CUDA when present); on CUDA bf16 autocast (``train.amp``) and
channels_last (``train.channels_last``); both are no-ops on CPU.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import paths
from ..config import ModelConfig, Params, PhaseConfig
from ..runtime import device_name, file_sha256, git_commit, pick_device, seed_everything
from .data import BatchSampler, OnlineDegrader, PatchSet, load_patches, to_tensor
from .ema import ModelEMA
from .objectives import PhaseLosses, loss_spec
from .state import capture_rng, fingerprint, load_state, restore_rng, save_state
from .validation import autocast, val_grid, validate

__all__ = ["PHASES", "PhasePlan", "TrainResult", "plan_phase", "train_phase", "init_weights",
           "build_optimizer", "build_scheduler", "dvc_stage_name"]

PHASES = ("l1", "perceptual", "adversarial", "modified")
_PREVIOUS = {"perceptual": "l1", "adversarial": "perceptual", "modified": "adversarial"}


@dataclass
class PhasePlan:
    """What one stage trains: phase, variant, architecture, settings, where it starts and writes."""

    phase: str
    variant: str | None
    model_cfg: ModelConfig
    cfg: PhaseConfig
    out_dir: Path
    init_from: Path | None
    partial_init: bool
    stage: str
    root: Path = Path(".")

    @property
    def name(self) -> str:
        return self.phase if self.variant is None else f"{self.phase}/{self.variant}"


@dataclass
class TrainResult:
    out_dir: Path
    best_step: int
    val_psnr: dict[str, float]
    final_val_psnr: dict[str, float]
    steps_per_s: float
    resumed_from: int | None = None
    run_id: str | None = None
    init: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def dvc_stage_name(phase: str, variant: str | None = None) -> str:
    """``train_l1`` ... ``train_modified@shared`` (the stage names of dvc.yaml)."""
    return f"train_{phase}" + (f"@{variant}" if variant else "")


def plan_phase(params: Params, phase: str, variant: str | None = None, root: str | Path = ".") -> PhasePlan:
    """Resolve the phase chain: l1 from scratch, perceptual from models/l1/model.pt, adversarial from
    models/perceptual/model.pt, modified@variant (``apply_variant``) from models/adversarial/model.pt."""
    from ..models import apply_variant

    root = Path(root)
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: use one of {', '.join(PHASES)}")
    if phase == "modified":
        variants = params.train.modified.variants
        if not variant:
            raise ValueError(f"--phase modified needs --variant (one of {sorted(variants)})")
        if variant not in variants:
            raise ValueError(f"variant {variant!r} is not in train.modified.variants (have {sorted(variants)})")
        model_cfg = apply_variant(params.model, variants[variant])
    else:
        if variant:
            raise ValueError(f"--variant is only for --phase modified (got phase {phase!r})")
        model_cfg = params.model
    prev = _PREVIOUS.get(phase)
    return PhasePlan(
        phase=phase,
        variant=variant,
        model_cfg=model_cfg,
        cfg=getattr(params.train, phase),
        out_dir=root / paths.phase_dir(phase, variant),
        init_from=(root / paths.phase_dir(prev) / "model.pt") if prev else None,
        partial_init=phase == "modified",
        stage=dvc_stage_name(phase, variant),
        root=root,
    )


# ------------------------------------------------------------------------------------ components
def init_weights(model: nn.Module, path: Path, partial: bool, levels: int) -> dict[str, Any]:
    """Load the previous phase's ``model.pt`` into ``model``.

    ``partial=False``: every tensor must match (:func:`load_state_strict`, clear error otherwise).
    ``partial=True`` (modified variants): tensors whose name and shape match are loaded, the rest
    keeps its initialisation; the counts are returned (``loaded``, ``skipped``: model tensors left
    at init, ``unused``: checkpoint tensors without a match).
    """
    from ..models.checkpoint import CheckpointError, load_state_strict, read_checkpoint

    if not path.is_file():
        prev = path.parent.name
        raise FileNotFoundError(f"{path} not found: this phase starts from the '{prev}' phase's model; "
                                f"run its stage first (dvc repro train_{prev} / snakemake {path})")
    ckpt = read_checkpoint(path)
    if int(ckpt["meta"].get("levels", -1)) != levels:
        raise CheckpointError(f"{path} has {ckpt['meta'].get('levels')} pyramid levels, this study needs {levels} "
                              f"(data.scales changed?): retrain the earlier phases")
    state = ckpt["state_dict"]
    own = model.state_dict()
    if partial:
        match = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        own.update(match)
        model.load_state_dict(own)
        loaded, skipped, unused = len(match), len(own) - len(match), len(state) - len(match)
    else:
        load_state_strict(model, state, str(path))
        loaded, skipped, unused = len(state), 0, 0
    return {"path": str(path), "sha256": file_sha256(path), "loaded": loaded, "skipped": skipped,
            "unused": unused, "step": ckpt["meta"].get("step"), "phase": ckpt["meta"].get("phase"),
            "data_hash": ckpt["meta"].get("data_hash")}


def build_optimizer(module: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015), betas (0.9, 0.999), no weight decay."""
    return torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999))


def build_scheduler(opt: torch.optim.Optimizer, kind: str, steps: int,
                    warmup: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """``cosine``: cosine annealing from lr to lr/100 over ``steps`` (Loshchilov & Hutter 2017, no
    restarts); ``step``: halve the lr after every quarter of ``steps`` (LapSRN's step decay). With
    ``warmup`` > 0 the lr first rises linearly from lr/warmup over ``warmup`` steps (Goyal et al. 2017)."""
    steps = max(1, steps)
    if kind == "cosine":
        def decay(k: int) -> float:
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))
    elif kind == "step":
        def decay(k: int) -> float:
            return 0.5 ** (k // max(1, steps // 4))
    else:
        raise ValueError(f"unknown train.lr_schedule {kind!r}: use 'cosine' or 'step'")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup) * decay(k) if warmup else decay(k))


def _clip(module: nn.Module, max_norm: float | None) -> torch.Tensor | None:
    """Clip the global gradient norm; returns the norm before clipping (None when clipping is off)."""
    if max_norm is None:
        return None
    return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm).detach()


def _module_with(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    m = copy.deepcopy(template)
    m.load_state_dict(state)
    return m


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _data_hash(train_file: Path) -> str:
    return file_sha256(train_file)


# ------------------------------------------------------------------------------------- training
class _Run:
    """Mutable training state of one phase (everything ``last.pt`` stores)."""

    def __init__(self, params: Params, plan: PhasePlan, device: torch.device, train: PatchSet) -> None:
        from ..models import Discriminator, build_model

        t = params.train
        self.params, self.plan, self.device = params, plan, device
        self.scales = list(params.data.scales)
        self.levels = params.data.levels
        self.cuda = device.type == "cuda"
        self.amp = t.amp and self.cuda
        self.channels_last = t.channels_last and self.cuda
        mf = torch.channels_last if self.channels_last else torch.contiguous_format

        seed_everything(params.seed)
        self.model = build_model(plan.model_cfg, self.levels).to(device, memory_format=mf)
        self.init: dict[str, Any] | None = None
        if plan.init_from is not None:
            self.init = init_weights(self.model, plan.init_from, plan.partial_init, self.levels)
        # A variant that inherits only part of its weights first catches up on the Charbonnier budget of
        # the main line (train.l1.steps, pixel loss only), then runs its own steps with the full loss set:
        # it is compared with the unmodified model at an equal training budget, not after a few steps
        # from mostly random weights.
        self.pretrain = t.l1.steps if plan.partial_init and self.init is not None and self.init["skipped"] else 0
        self.total_steps = self.pretrain + plan.cfg.steps
        self.spec = loss_spec(params, plan.phase)
        self.losses = PhaseLosses(self.spec).to(device)
        self.disc: nn.Module | None = None
        self.opt_d = self.sched_d = None
        if self.spec.adversarial is not None:
            self.disc = Discriminator(self.spec.adversarial.discriminator).to(device, memory_format=mf)
            self.opt_d = build_optimizer(self.disc, self.spec.adversarial.lr_d)
            self.sched_d = build_scheduler(self.opt_d, t.lr_schedule, self.total_steps, t.warmup_steps)
        self.ema = ModelEMA(self.model, t.ema_decay) if t.ema_decay is not None else None
        self.opt_g = build_optimizer(self.model, plan.cfg.lr)
        self.sched_g = build_scheduler(self.opt_g, t.lr_schedule, self.total_steps, t.warmup_steps)
        self.sampler = BatchSampler(len(train), t.batch_size, params.seed)
        self.degrader = OnlineDegrader(params.data.patches, params.seed) if t.degradation == "online" else None
        self.train_data = train
        self.step = 0
        self.best_val = -math.inf
        self.best_step = 0
        self.best_psnr: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_psnr: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}
        self.acc: dict[str, float] = {}
        self.acc_n = 0
        self.train_seconds = 0.0
        self.run_id: str | None = None

    # -- eval weights
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # -- one optimisation step
    def train_step(self) -> dict[str, torch.Tensor]:
        """One generator (+ discriminator) update; returns the detached loss terms (no host sync)."""
        t = self.params.train
        zoom = self.scales[self.step % len(self.scales)]
        idx = self.sampler.next()
        fov_np = self.train_data.fov[idx] if self.train_data.fov is not None and self.spec.uses_fov else None
        if self.degrader is not None:
            hr_np, lr_np, fov_np = self.degrader(self.train_data.hr[idx], zoom, self.step, fov_np)
        else:
            hr_np, lr_np = self.train_data.hr[idx], self.train_data.lr[zoom][idx]
        lr = to_tensor(lr_np, self.device, self.channels_last)
        hr = to_tensor(hr_np, self.device, self.channels_last)
        fov = None if fov_np is None else torch.from_numpy(fov_np).to(self.device, non_blocking=True)
        self.model.train()
        if self.disc is not None:
            self.disc.requires_grad_(False)  # the generator step does not train D
        pixel_only = self.step < self.pretrain
        with autocast(self.device, self.amp):
            outs = self.model(lr, n_up=int(math.log2(zoom)))
            loss, terms = self.losses.generator(outs, hr, fov, self.disc, self.step - self.pretrain, pixel_only)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        gn = _clip(self.model, t.grad_clip)
        if gn is not None:
            terms["grad_norm"] = gn
        self.opt_g.step()
        self.sched_g.step()
        if self.disc is not None and not pixel_only:
            self.disc.requires_grad_(True)
            with autocast(self.device, self.amp):
                d_loss, d_terms = self.losses.discriminator(outs[-1].detach().float(), hr, self.disc)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            _clip(self.disc, t.grad_clip)
            self.opt_d.step()
            self.sched_d.step()
            terms.update(d_terms)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return terms

    def accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().double()
            self.acc[k] = self.acc[k] + v if k in self.acc else v
        self.acc_n += 1

    def flush_log(self) -> dict[str, float]:
        """Mean of each loss term since the last flush, plus the lr of the next step; raises on NaN/inf."""
        row = {k: float(v) / max(1, self.acc_n) for k, v in self.acc.items()}
        row["lr"] = float(self.opt_g.param_groups[0]["lr"])
        self.acc, self.acc_n = {}, 0
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        if bad:
            raise RuntimeError(f"[train {self.plan.name}] non-finite training loss before step {self.step}: {bad}. "
                               "Lower the learning rate (train.<phase>.lr) or check the patches")
        self.history.setdefault(self.step, {}).update(row)
        return row

    # -- resume state
    def state_dict(self, fp: str) -> dict[str, Any]:
        return {
            "fingerprint": fp,
            "phase": self.plan.phase,
            "variant": self.plan.variant,
            "step": self.step,
            "steps": self.total_steps,
            "model": _cpu_state(self.model),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "disc": _cpu_state(self.disc) if self.disc is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "sched_d": self.sched_d.state_dict() if self.sched_d is not None else None,
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng(),
            "best_val": self.best_val,
            "best_step": self.best_step,
            "best_psnr": self.best_psnr,
            "best_state": self.best_state,
            "last_psnr": self.last_psnr,
            "history": self.history,
            "acc": {k: v.cpu() for k, v in self.acc.items()},
            "acc_n": self.acc_n,
            "train_seconds": self.train_seconds,
            "run_id": self.run_id,
            "init": self.init,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        if self.ema is not None:
            self.ema.load_state_dict(s["ema"])
        if self.disc is not None:
            self.disc.load_state_dict(s["disc"])
            self.opt_d.load_state_dict(s["opt_d"])
            self.sched_d.load_state_dict(s["sched_d"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.sched_g.load_state_dict(s["sched_g"])
        self.sampler.load_state_dict(s["sampler"])
        self.step = int(s["step"])
        self.best_val, self.best_step = float(s["best_val"]), int(s["best_step"])
        self.best_psnr, self.best_state = dict(s["best_psnr"]), s["best_state"]
        self.last_psnr = dict(s["last_psnr"])
        self.history = {int(k): dict(v) for k, v in s["history"].items()}
        self.acc = {k: v.to(self.device) for k, v in s["acc"].items()}
        self.acc_n = int(s["acc_n"])
        self.train_seconds = float(s["train_seconds"])
        self.run_id = s["run_id"]
        restore_rng(s["rng"])  # last: everything above may have consumed random numbers


def _fingerprint(params: Params, plan: PhasePlan, data_hash: str, init: dict[str, Any] | None) -> str:
    t = params.train.model_dump(mode="json")
    phase_sections = {"l1": ["l1"], "perceptual": ["perceptual"], "adversarial": ["perceptual", "adversarial"],
                      "modified": ["perceptual", "adversarial", "modified"]}[plan.phase]
    common = {k: v for k, v in t.items() if k not in ("l1", "perceptual", "adversarial", "modified")}
    for k in ("log_every",):  # presentation only
        common.pop(k, None)
    return fingerprint({
        "phase": plan.phase, "variant": plan.variant, "seed": params.seed,
        "scales": params.data.scales, "model": plan.model_cfg.model_dump(mode="json"),
        "train": common, "sections": {k: t[k] for k in phase_sections},
        "data_hash": data_hash, "init_sha256": init["sha256"] if init else None,
    })


def _write_plots(path: Path, history: dict[int, dict[str, float]], scales: list[int]) -> None:
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


def _checkpoint_meta(params: Params, plan: PhasePlan, run: _Run, data_hash: str) -> dict[str, Any]:
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


def train_phase(
    params: Params,
    phase: str,
    variant: str | None = None,
    *,
    root: str | Path = ".",
    track: bool = True,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one phase (and variant) and write ``models/<phase>/`` under ``root``.

    Writes ``model.pt`` (best mean val PSNR; EMA weights when EMA is on), ``metrics.json`` and
    ``plots.csv``, and the resume state ``models/.resume/<stage>/last.pt`` (:func:`paths.resume_file`); with ``track`` one MLflow run (see
    :mod:`retina_sr.tracking`). A matching ``last.pt`` is resumed. ``on_step(step)`` is called after
    every completed step (progress hooks, tests).
    """
    from tqdm.auto import tqdm

    root = Path(root)
    plan = plan_phase(params, phase, variant, root)
    t = params.train
    device = pick_device(t.device)
    train_file, val_file = root / paths.patches_file("train"), root / paths.patches_file("val")
    train = load_patches(train_file, params.data.scales)
    val = load_patches(val_file, params.data.scales, limit=t.max_val_patches)
    if train.crop != val.crop:
        raise ValueError(f"{train_file} has {train.crop}px patches but {val_file} has {val.crop}px: rerun 'patches'")
    data_hash = _data_hash(train_file)
    run = _Run(params, plan, device, train)
    fp = _fingerprint(params, plan, data_hash, run.init)
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    last_path = root / paths.resume_file(plan.phase, plan.variant)
    last_path.parent.mkdir(parents=True, exist_ok=True)
    _clear_products(out, last_path.parent)

    resumed_from: int | None = None
    state = load_state(last_path)
    if state is not None:
        if state.get("fingerprint") == fp:
            run.load_state_dict(state)
            resumed_from = run.step
            print(f"[train {plan.name}] resuming from {last_path} at step {run.step}/{run.total_steps}")
        else:
            print(f"[train {plan.name}] {last_path} belongs to another configuration or data; starting over")
    del state

    tracker = _Tracker(params, plan, run, device, data_hash, resumed_from, root) if track else None
    try:
        if tracker is not None:
            tracker.start()
        steps = run.total_steps
        if run.pretrain:
            print(f"[train {plan.name}] {run.init['skipped']} of {run.init['loaded'] + run.init['skipped']} tensors "
                  f"start from initialisation: {run.pretrain} Charbonnier steps (train.l1.steps) before "
                  f"{plan.cfg.steps} steps with the phase's full loss set")
        bar = tqdm(total=steps, initial=run.step, desc=f"train {plan.name}", disable=not progress,
                   mininterval=2.0, dynamic_ncols=True)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        t0 = time.perf_counter()
        while run.step < steps:
            terms = run.train_step()
            run.accumulate(terms)
            bar.update(1)
            step = run.step
            boundary = step % t.log_every == 0 or step % t.val_every == 0 or step % t.checkpoint_every == 0 or step == steps
            if boundary:
                sync()
                run.train_seconds += time.perf_counter() - t0
                row = run.flush_log()
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", refresh=False)
                metrics = dict(row)
                if step % t.val_every == 0 or step == steps:
                    psnr = validate(run.eval_model, val, run.scales, device, t.batch_size, run.amp, run.channels_last)
                    run.last_psnr = psnr
                    vrow = {f"val_psnr_{k}": v for k, v in psnr.items()}
                    run.history[step].update(vrow)
                    metrics.update(vrow)
                    if psnr["mean"] > run.best_val:  # kept in memory and in last.pt; model.pt only at the end
                        run.best_val, run.best_step, run.best_psnr = psnr["mean"], step, psnr
                        run.best_state = _cpu_state(run.eval_model)
                    bar.write(f"[train {plan.name}] step {step}: val PSNR " +
                              ", ".join(f"{k} {v:.2f}" for k, v in psnr.items()) + f" (best {run.best_val:.2f} @ {run.best_step})")
                if tracker is not None:
                    tracker.log(metrics, step)
                if step % t.checkpoint_every == 0 or step == steps:
                    save_state(last_path, run.state_dict(fp))
                t0 = time.perf_counter()
            if on_step is not None:
                on_step(step)
        bar.close()
        result = _finish(params, plan, run, val, data_hash, resumed_from, tracker)
    except BaseException:
        if tracker is not None:
            tracker.close(failed=True)
        raise
    if tracker is not None:
        tracker.close(failed=False)
    return result


def _clear_products(out: Path, resume_dir: Path) -> None:
    """A starting stage removes its own previous products and orphan ``*.tmp`` files of a killed write.

    ``model.pt``, ``metrics.json`` and ``plots.csv`` are written only when the stage finishes, so a
    stage killed mid-run leaves no file that looks like a finished model (the resume state in
    ``models/.resume`` is enough to continue).
    """
    for name in ("model.pt", "metrics.json", "plots.csv"):
        (out / name).unlink(missing_ok=True)
    for d in (out, resume_dir):
        for tmp in d.glob("*.tmp"):
            tmp.unlink()


def _finish(params: Params, plan: PhasePlan, run: _Run, val: PatchSet, data_hash: str,
            resumed_from: int | None, tracker: _Tracker | None) -> TrainResult:
    """Write model.pt (from the best weights), metrics.json, plots.csv; log artifacts."""
    from ..models.checkpoint import save_model

    out = plan.out_dir
    if run.best_state is None:  # cannot happen: the last step always validates
        raise RuntimeError(f"[train {plan.name}] no validated weights to save")
    best = _module_with(run.eval_model, {k: v.to(run.device) for k, v in run.best_state.items()})
    save_model(out / "model.pt", best, _checkpoint_meta(params, plan, run, data_hash))
    steps_per_s = run.step / run.train_seconds if run.train_seconds > 0 else float("nan")
    metrics: dict[str, Any] = {
        "best_step": run.best_step,
        "val_psnr": {k: round(v, 4) for k, v in run.best_psnr.items()},
        "final_val_psnr": {k: round(v, 4) for k, v in run.last_psnr.items()},
        "steps": run.step,
        "steps_per_s": round(steps_per_s, 4),
        "batch_size": params.train.batch_size,
        "crop": run.train_data.crop,
    }
    if run.init is not None:
        metrics["init_loaded"] = run.init["loaded"]
        metrics["init_skipped"] = run.init["skipped"]
        metrics["pretrain_steps"] = run.pretrain
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_plots(out / "plots.csv", run.history, run.scales)
    if tracker is not None:
        tracker.finish(best, val, metrics, out / "model.pt")
    return TrainResult(out_dir=out, best_step=run.best_step, val_psnr=dict(run.best_psnr),
                       final_val_psnr=dict(run.last_psnr), steps_per_s=steps_per_s, resumed_from=resumed_from,
                       run_id=run.run_id, init=run.init, metrics=metrics)


class _Tracker:
    """The MLflow run of one phase: started (or resumed) with tags, then metrics and artifacts."""

    def __init__(self, params: Params, plan: PhasePlan, run: _Run, device: torch.device, data_hash: str,
                 resumed_from: int | None, root: Path) -> None:
        self.params, self.plan, self.run, self.device = params, plan, run, device
        self.data_hash, self.resumed_from, self.root = data_hash, resumed_from, root
        self._cm = None

    def start(self) -> None:
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
        print(f"[train {self.plan.name}] registered as models:/{name}/{version}")

    def close(self, failed: bool) -> None:
        if self._cm is None:
            return
        cm, self._cm = self._cm, None
        if failed:
            import sys

            cm.__exit__(*sys.exc_info())
        else:
            cm.__exit__(None, None, None)
