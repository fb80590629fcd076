"""One trainer for every phase of the study (:data:`retina_sr.phases.PHASES`).

Per step (Lai et al. 2017, LapSRN; the loss set of each phase is in :mod:`.objectives`):

1. the zoom cycles deterministically through ``train.loop.zoom_cycle`` (default ``data.scales``;
   ``cycle[step % len(cycle)]``);
2. a batch of ``train.loop.batch_size`` patches is drawn by the resumable :class:`~.data.BatchSampler`;
3. the model sees ``lr_x{s}`` with ``n_up = log2(s)`` and returns every pyramid level;
4. the generator loss is back-propagated, gradients clipped to ``train.loop.grad_clip`` (global norm),
   Adam (Kingma & Ba 2015, betas 0.9/0.999) steps, the schedule (``train.loop.lr_schedule``: cosine to
   lr/100, or halving every quarter of the steps) steps;
5. adversarial phases then update the discriminator (Adam with ``lr_d``, same schedule/clipping);
6. the EMA of the weights (``train.loop.ema_decay``) is updated.

At a boundary step (:meth:`TrainingRun.boundary`): every ``val_every`` steps (and at the end) PSNR per
zoom is measured on ``val.npy`` with the EMA weights (raw weights when EMA is off) and the best mean PSNR
is kept for ``model.pt``; every ``checkpoint_every`` steps (and at the end) ``last.pt`` stores the full
resume state, so a stage killed with SIGKILL and started again continues from there and ends with the
same weights as an uninterrupted run (bit-exact on CPU). A ``last.pt`` written for another configuration
(:func:`stage_fingerprint`: the stage's parameters, the data hash, the init checkpoint) is ignored and
training starts over. Products and the MLflow run: :mod:`.outputs`.

Device: ``train.loop.device`` (``auto``: CUDA when present); on CUDA bf16 autocast (``train.loop.amp``),
channels_last (``train.loop.channels_last``), ``cudnn.benchmark`` (few shapes: one per zoom) and fused
Adam; on CPU Adam's ``foreach`` path. The online degradation runs on the GPU there
(``train.loop.degrade_on``: :meth:`.data.OnlineDegrader.on_device`, with the uint8 crops resident on the
GPU when they fit, :func:`resident_arrays`), else on the host; ``train.loop.compile`` compiles the
generator (one graph per zoom). The checkpoint records both. ``train.loop.devices`` > 1: data-parallel under ``torchrun``
(:mod:`.distributed`): every rank draws the same global batch and trains on its slice (the online
degradation of a patch depends on its position in the global batch, not on the rank), DDP averages the
gradients, the logged losses are averaged over the ranks; rank 0 alone validates and writes ``last.pt``,
``model.pt``, plots, metrics and the MLflow run, and every rank resumes from the same ``last.pt`` (each
restores its own RNG state). The relativistic GAN's batch means are taken over each rank's slice.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import paths, phases
from ..config import ModelConfig, Params, PhaseConfig, levels_for_zoom
from ..models.tensors import to_tensor, uint8_to_float
from ..runtime import file_sha256, seed_everything
from .data import BatchSampler, OnlineDegrader, PatchSet, load_patches
from .distributed import DistContext
from .ema import ModelEMA
from .objectives import PhaseLosses, loss_spec
from .state import capture_rng, fingerprint, load_state, restore_rng, save_state
from .validation import autocast, retina_masks, validate

__all__ = ["PhasePlan", "TrainResult", "TrainingRun", "plan_phase", "train_phase", "init_weights",
           "build_optimizer", "build_scheduler", "stage_fingerprint"]

log = logging.getLogger(__name__)


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


def plan_phase(params: Params, phase: str, variant: str | None = None, root: str | Path = ".") -> PhasePlan:
    """Resolve the phase chain of :data:`retina_sr.phases.PHASES`: a phase starts from its previous
    phase's ``model.pt`` (none for the first); a variant phase applies ``train.variants.<variant>`` to
    ``model`` (:func:`~retina_sr.models.apply_variant`)."""
    from ..models.lapsrn import apply_variant

    root = Path(root)
    p = phases.get(phase)
    if p.variants:
        variants = params.train.variants
        if not variant:
            raise ValueError(f"--phase {p.name} needs --variant (one of {sorted(variants)})")
        if variant not in variants:
            raise ValueError(f"variant {variant!r} is not in {phases.VARIANTS_KEY} (have {sorted(variants)})")
        model_cfg = apply_variant(params.model, variants[variant])
    else:
        if variant:
            raise ValueError(f"--variant is only for --phase {' / '.join(q.name for q in phases.PHASES if q.variants)}"
                             f" (got phase {p.name!r})")
        model_cfg = params.model
    return PhasePlan(
        phase=p.name,
        variant=variant,
        model_cfg=model_cfg,
        cfg=getattr(params.train, p.name),
        out_dir=root / paths.phase_dir(p.name, variant),
        init_from=(root / paths.model_file(p.previous)) if p.previous else None,
        partial_init=p.partial_init,
        stage=phases.stage_name(p.name, variant),
        root=root,
    )


def stage_fingerprint(params: Params, plan: PhasePlan, data_hash: str, init: dict[str, Any] | None) -> str:
    """What a resume state belongs to: the values of every parameter the stage depends on
    (:func:`retina_sr.phases.stage_params`, the same keys ``dvc.yaml`` lists), the variant's
    architecture, the training data and the checkpoint the phase started from."""
    return fingerprint({
        "stage": plan.stage,
        "params": {k: params.value(k) for k in phases.stage_params(plan.phase, plan.variant)},
        "model": plan.model_cfg.model_dump(mode="json"),
        "data_hash": data_hash,
        "init_sha256": init["sha256"] if init else None,
    })


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
        stage = phases.stage_name(prev) if prev in phases.NAMES else "<its stage>"
        raise FileNotFoundError(f"{path} not found: this phase starts from the '{prev}' phase's model; "
                                f"run its stage first (dvc repro {stage} / snakemake {path})")
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
    """Adam (Kingma & Ba 2015), betas (0.9, 0.999), no weight decay; the fused kernel when the
    parameters are on CUDA, the multi-tensor (``foreach``) path otherwise."""
    params = [p for p in module.parameters() if p.requires_grad]
    if params and all(p.device.type == "cuda" for p in params):
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), foreach=True)


def lr_factor(kind: str, steps: int, warmup: int = 0) -> Callable[[int], float]:
    """The multiplier of the peak lr at step ``k`` of a ``steps``-step schedule: ``cosine``: cosine
    annealing from 1 to 1/100 (Loshchilov & Hutter 2017, no restarts); ``step``: halve after every quarter
    of ``steps`` (LapSRN's step decay). With ``warmup`` > 0 it first rises linearly from 1/warmup over
    ``warmup`` steps (Goyal et al. 2017)."""
    steps = max(1, steps)
    if kind == "cosine":
        def decay(k: int) -> float:
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))
    elif kind == "step":
        def decay(k: int) -> float:
            return float(0.5 ** (k // max(1, steps // 4)))
    else:
        raise ValueError(f"unknown train.loop.lr_schedule {kind!r}: use 'cosine' or 'step'")
    return (lambda k: min(1.0, (k + 1) / warmup) * decay(k)) if warmup else decay


def build_scheduler(opt: torch.optim.Optimizer, kind: str, steps: int, warmup: int = 0,
                    lead: tuple[int, float] = (0, 1.0)) -> torch.optim.lr_scheduler.LRScheduler:
    """The :func:`lr_factor` schedule over ``steps``; ``lead = (n, ratio)`` puts a schedule of its own
    before it: ``n`` steps at ``ratio`` x the optimizer's lr (a variant's catch-up on the main line's
    budget and lr), then the ``steps`` from the start of the schedule."""
    n, ratio = lead
    main = lr_factor(kind, steps, warmup)
    if n <= 0:
        return torch.optim.lr_scheduler.LambdaLR(opt, main)
    first = lr_factor(kind, n, warmup)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: ratio * first(k) if k < n else main(k - n))


def _clip(module: nn.Module, max_norm: float | None) -> torch.Tensor | None:
    """Clip the global gradient norm; returns the norm before clipping (None when clipping is off)."""
    if max_norm is None:
        return None
    return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm).detach()


def module_with(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``template`` holding ``state``."""
    m = copy.deepcopy(template)
    m.load_state_dict(state)
    return m


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------- training
def resolve_degrade_on(setting: str, device: torch.device, jpeg_quality: Any) -> str:
    """``train.loop.degrade_on`` -> "host" or "device" (``auto``: device on CUDA unless JPEG is on)."""
    if setting == "device" and jpeg_quality:
        raise ValueError("train.loop.degrade_on is 'device' but data.patches.jpeg_quality is set, and JPEG "
                         "runs on the host only: set train.loop.degrade_on to 'host' or 'auto'")
    if setting == "auto":
        return "device" if device.type == "cuda" and not jpeg_quality else "host"
    return setting


#: share of the GPU's free memory the resident training crops may take
RESIDENT_SHARE = 0.4


def resident_arrays(data: PatchSet, device: torch.device, with_fov: bool) -> dict[str, torch.Tensor]:
    """The split's uint8 HR crops (and FOV masks) copied to the GPU once, when they take at most
    :data:`RESIDENT_SHARE` of its free memory; else ``{}`` (batches are gathered on the host and uploaded)."""
    arrays = {"hr": data.hr, **({"fov": data.fov} if with_fov and data.fov is not None else {})}
    need = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
    free, _ = torch.cuda.mem_get_info(device)
    if need > RESIDENT_SHARE * free:
        log.info("training crops (%.1f GB) stay on the host: more than %.0f%% of the GPU's free %.1f GB",
                 need / 1e9, 100 * RESIDENT_SHARE, free / 1e9)
        return {}
    return {k: torch.from_numpy(np.ascontiguousarray(a)).to(device) for k, a in arrays.items()}


class TrainingRun:
    """Mutable training state of one phase (everything ``last.pt`` stores) and its step."""

    def __init__(self, params: Params, plan: PhasePlan, device: torch.device, train: PatchSet,
                 dist: DistContext | None = None) -> None:
        from ..models.discriminator import Discriminator
        from ..models.lapsrn import build_model

        t = params.train.loop
        self.params, self.plan, self.device, self.loop = params, plan, device, t
        self.dist = dist or DistContext()
        if t.batch_size % self.dist.world:
            raise ValueError(f"train.loop.batch_size {t.batch_size} is not divisible by {self.dist.world} processes "
                             "(train.loop.devices)")
        self.scales = list(params.data.scales)
        self.cycle = list(t.zoom_cycle or self.scales)  # the zoom of step k: cycle[k % len(cycle)]
        self.levels = params.data.levels
        self.cuda = device.type == "cuda"
        self.amp = t.amp and self.cuda
        self.channels_last = t.channels_last and self.cuda
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # one input shape per zoom: the autotuner's choice sticks

        seed_everything(params.seed)  # the same initial weights on every rank
        self.model = build_model(plan.model_cfg, self.levels).to(device, memory_format=mf)  # type: ignore[call-overload]
        self.init: dict[str, Any] | None = None
        if plan.init_from is not None:
            self.init = init_weights(self.model, plan.init_from, plan.partial_init, self.levels)
        # A variant (an architecture other than the model it starts from: new tensors, or the same tensors
        # recursed or shared) first catches up on the main line's first phase exactly as that phase trained
        # (train.<catch_up>: its steps, lr, schedule and loss set), then runs its own steps with its own lr
        # schedule and the full loss set: it is compared with the unmodified model at an equal training
        # budget, not after a few steps from weights that no longer fit its architecture.
        catch_up = phases.get(plan.phase).catch_up
        changed = plan.partial_init and self.init is not None and plan.model_cfg != params.model
        self.catch_up_cfg: PhaseConfig | None = getattr(params.train, catch_up) if catch_up and changed else None
        self.pretrain = self.catch_up_cfg.steps if self.catch_up_cfg is not None else 0
        self.total_steps = self.pretrain + plan.cfg.steps
        self.spec = loss_spec(params, plan.phase, plan.variant)
        self.losses = PhaseLosses(self.spec).to(device)
        self.catch_up_losses: PhaseLosses | None = None
        if catch_up and self.catch_up_cfg is not None:
            self.catch_up_losses = PhaseLosses(loss_spec(params, catch_up, plan.variant)).to(device)
        self.disc: nn.Module | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        self.sched_d: torch.optim.lr_scheduler.LRScheduler | None = None
        if self.spec.adversarial is not None:
            self.disc = Discriminator(self.spec.adversarial.discriminator).to(device, memory_format=mf)  # type: ignore[call-overload]
            self.opt_d = build_optimizer(self.disc, self.spec.adversarial.lr_d)
            self.sched_d = build_scheduler(self.opt_d, t.lr_schedule, plan.cfg.steps, t.warmup_steps)  # not in catch-up
        self.ema = ModelEMA(self.model, t.ema_decay) if t.ema_decay is not None else None
        self.opt_g = build_optimizer(self.model, plan.cfg.lr)
        lead = (self.pretrain, self.catch_up_cfg.lr / plan.cfg.lr) if self.catch_up_cfg is not None else (0, 1.0)
        self.sched_g = build_scheduler(self.opt_g, t.lr_schedule, plan.cfg.steps, t.warmup_steps, lead=lead)
        self.sampler = BatchSampler(len(train), t.batch_size, params.seed)
        self.degrader = OnlineDegrader(params.data.patches, params.seed) if t.degradation == "online" else None
        self.train_data = train
        #: where the online degradation runs ("host", "device") or "stored" (fixed LR arrays)
        self.degrade_on = resolve_degrade_on(t.degrade_on, device, params.data.patches.jpeg_quality) \
            if self.degrader is not None else "stored"
        self._resident: dict[str, torch.Tensor] = {}
        if self.degrade_on == "device" and self.cuda:
            self._resident = resident_arrays(train, device, self.spec.uses_fov)
        # DDP wrappers (training forward/backward only; state, EMA and evaluation use the bare modules).
        # Zooms below the largest leave the upper pyramid levels unused: find_unused_parameters.
        self.model_dp: nn.Module = self.model
        self.disc_dp: nn.Module | None = self.disc
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if self.cuda else None
            self.model_dp = DDP(self.model, device_ids=ids, find_unused_parameters=len(self.scales) > 1)
            if self.disc is not None:
                self.disc_dp = DDP(self.disc, device_ids=ids)
        self.compiled = bool(t.compile)
        if self.compiled:  # one static graph per zoom (n_up and the crop's shapes); the state stays self.model's
            self.model_dp = torch.compile(self.model_dp, dynamic=False)  # type: ignore[assignment]
        seed_everything(params.seed + self.dist.rank)  # per-rank RNG streams (rank 0: the single-process one)
        self.step = 0
        self.best_val = -math.inf
        self._val_masks: tuple[PatchSet, np.ndarray | None] | None = None
        self.best_step = 0
        self.best_psnr: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_psnr: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}
        self.acc: dict[str, torch.Tensor] = {}
        self.acc_n = 0
        self.train_seconds = 0.0
        self.run_id: str | None = None
        self._t0 = time.perf_counter()

    # -- eval weights
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # -- one optimisation step
    def _upload(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.pin_memory().to(self.device, non_blocking=True) if self.cuda else t

    def _batch(self, idx: np.ndarray, zoom: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The step's (LR, HR) float NCHW batch on the device, and the FOV masks when the loss reads them."""
        d = self.train_data
        want_fov = d.fov is not None and self.spec.uses_fov  # only phases whose loss reads it get a mask
        if self.degrade_on == "device" and self.degrader is not None:
            if self._resident:  # the uint8 crops live on the GPU: gather there
                ix = self._upload(idx.astype(np.int64))
                hr_u8 = self._resident["hr"].index_select(0, ix)
                fov_t = self._resident["fov"].index_select(0, ix) if want_fov else None
            else:
                hr_u8 = self._upload(d.hr[idx])
                fov_t = self._upload(d.fov[idx]) if want_fov and d.fov is not None else None
            hr_u8, lr_u8, fov_t = self.degrader.on_device(hr_u8, zoom, self.step, fov_t, offset=offset)
            return uint8_to_float(lr_u8, self.channels_last), uint8_to_float(hr_u8, self.channels_last), fov_t
        fov_np = d.fov[idx] if want_fov and d.fov is not None else None
        if self.degrader is not None:
            hr_np, lr_np, fov_np = self.degrader(d.hr[idx], zoom, self.step, fov_np, offset=offset)
        else:
            hr_np, lr_np = d.hr[idx], d.lr[zoom][idx]
        fov = self._upload(fov_np) if fov_np is not None else None
        return to_tensor(lr_np, self.device, self.channels_last), to_tensor(hr_np, self.device, self.channels_last), fov

    def zoom_at(self, step: int) -> int:
        """The zoom training step ``step`` (0-based) uses."""
        return self.cycle[step % len(self.cycle)]

    def train_step(self) -> dict[str, torch.Tensor]:
        """One generator (+ discriminator) update; returns the detached loss terms (no host sync)."""
        t = self.loop
        zoom = self.zoom_at(self.step)
        shard = self.dist.shard(t.batch_size)
        idx = self.sampler.next()[shard]  # every rank draws the global batch and keeps its slice
        lr, hr, fov = self._batch(idx, zoom, shard.start)
        self.model.train()
        catching_up = self.step < self.pretrain
        train_d = self.disc is not None and self.opt_d is not None and self.sched_d is not None and not catching_up
        d_real = None
        if train_d and self.disc_dp is not None:
            # The discriminator's one pass on the real batch: its graph serves the D update below, its
            # detached logits the relativistic generator loss (D does not change in between).
            self.disc.requires_grad_(True)  # type: ignore[union-attr]
            with autocast(self.device, self.amp):
                d_real = self.disc_dp(hr).float()
        if self.disc is not None:
            self.disc.requires_grad_(False)  # the generator step does not train D
        with autocast(self.device, self.amp):
            outs = self.model_dp(lr, n_up=levels_for_zoom(zoom))
            if catching_up and self.catch_up_losses is not None:
                loss, terms = self.catch_up_losses.generator(outs, hr, fov, zoom=zoom)
            else:
                loss, terms = self.losses.generator(outs, hr, fov, self.disc, self.step - self.pretrain,
                                                    d_real=None if d_real is None else d_real.detach(), zoom=zoom)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        gn = _clip(self.model, t.grad_clip)
        if gn is not None:
            terms["grad_norm"] = gn
        # the loss per zoom too (plots.csv, MLflow): the zooms alternate every step and differ in loss, so the
        # mean over a log window mixes them in varying shares and zigzags; flush_log divides by that zoom's steps
        terms[f"loss_x{zoom}"] = terms["loss"]
        self.opt_g.step()
        self.sched_g.step()
        if train_d and self.disc is not None and self.disc_dp is not None and self.opt_d is not None \
                and self.sched_d is not None:
            self.disc.requires_grad_(True)
            with autocast(self.device, self.amp):
                d_loss, d_terms = self.losses.discriminator(outs[-1].detach().float(), hr, self.disc_dp, d_real=d_real)
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
        """Mean of each loss term since the last flush (over the ranks too: every rank calls it at the same
        step), plus the lr of the next step; raises on NaN/inf."""
        if self.dist.enabled and self.acc:
            keys = sorted(self.acc)
            sums = torch.stack([self.acc[k] for k in keys])
            torch.distributed.all_reduce(sums)
            self.acc = dict(zip(keys, (sums / self.dist.world).unbind(0), strict=True))
        first = self.step - self.acc_n  # the window's steps
        n_at = {f"loss_x{s}": sum(self.zoom_at(st) == s for st in range(first, self.step))
                for s in self.scales}
        row = {k: float(v) / max(1, n_at.get(k, self.acc_n)) for k, v in self.acc.items()}
        row["lr"] = float(self.opt_g.param_groups[0]["lr"])
        self.acc, self.acc_n = {}, 0
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        if bad:
            raise RuntimeError(f"[train {self.plan.name}] non-finite training loss before step {self.step}: {bad}. "
                               "Lower the learning rate (train.<phase>.lr) or check the patches")
        self.history.setdefault(self.step, {}).update(row)
        return row

    # -- boundary work: log, validate, checkpoint
    def at_boundary(self) -> bool:
        s, t = self.step, self.loop
        return s % t.log_every == 0 or s % t.val_every == 0 or s % t.checkpoint_every == 0 or s == self.total_steps

    def boundary(self, val: PatchSet, last_path: Path, fp: str, report: Callable[[dict[str, float], int], None] | None,
                 say: Callable[[str], None]) -> dict[str, float]:
        """Log the mean losses; validate (every ``val_every`` and last step), keep the best weights in
        memory; save ``last.pt`` (every ``checkpoint_every`` and last step). The time spent here is not
        training time. Returns the logged metrics (``report(metrics, step)`` receives them too)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - self._t0
        t, step, last = self.loop, self.step, self.step == self.total_steps
        metrics = self.flush_log()
        rngs = self._gather_rng() if step % t.checkpoint_every == 0 or last else None  # collective
        if not self.dist.main:  # rank 0 alone validates and writes; the others wait for its checkpoint
            self.dist.barrier()
            self._t0 = time.perf_counter()
            return metrics
        if step % t.val_every == 0 or last:
            if self._val_masks is None or self._val_masks[0] is not val:  # the retina of each patch, once
                self._val_masks = (val, retina_masks(val, self.params.data.size))
            psnr = validate(self.eval_model, val, self.scales, self.device, t.batch_size, self.amp, self.channels_last,
                            masks=self._val_masks[1])
            self.last_psnr = psnr
            vrow = {f"val_psnr_{k}": v for k, v in psnr.items()}
            self.history[step].update(vrow)
            metrics = {**metrics, **vrow}
            # a variant's model is one of its own steps: a catch-up checkpoint never saw the phase's loss set
            own = step > self.pretrain or last
            if own and psnr["mean"] > self.best_val:  # kept in memory and in last.pt; model.pt only at the end
                self.best_val, self.best_step, self.best_psnr = psnr["mean"], step, psnr
                self.best_state = _cpu_state(self.eval_model)
            say(f"[train {self.plan.name}] step {step}: val PSNR " + ", ".join(f"{k} {v:.2f}" for k, v in psnr.items())
                + f" (best {self.best_val:.2f} @ {self.best_step})")
        if report is not None:
            report(metrics, step)
        if step % t.checkpoint_every == 0 or last:
            save_state(last_path, self.state_dict(fp, rngs))
        self.dist.barrier()
        self._t0 = time.perf_counter()
        return metrics

    def _gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's RNG state (rank order), for rank 0's ``last.pt``."""
        mine = capture_rng()
        if not self.dist.enabled:
            return [mine]
        out: list[Any] = [None] * self.dist.world
        torch.distributed.all_gather_object(out, mine)
        return out

    # -- resume state
    def resume(self, last_path: Path, fp: str) -> int | None:
        """Continue from ``last_path`` when it belongs to this configuration (``fp``); returns its step."""
        state = load_state(last_path)
        if state is None:
            return None
        if state.get("fingerprint") != fp:
            log.info("[train %s] %s belongs to another configuration or data; starting over", self.plan.name, last_path)
            return None
        if int(state.get("world", 1)) != self.dist.world:  # train.loop.devices is in fp: a hand-made mismatch
            log.info("[train %s] %s was written by %s process(es), not %d; starting over", self.plan.name, last_path,
                     state.get("world", 1), self.dist.world)
            return None
        self.load_state_dict(state)
        log.info("[train %s] resuming from %s at step %d/%d", self.plan.name, last_path, self.step, self.total_steps)
        return self.step

    def state_dict(self, fp: str, rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The resume state; ``rngs``: the RNG state of every rank (default: this process's alone)."""
        rngs = rngs if rngs is not None else [capture_rng()]
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
            "rng": rngs[0],
            "rng_ranks": rngs[1:],
            "world": len(rngs),
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
        if self.disc is not None and self.opt_d is not None and self.sched_d is not None:
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
        world = int(s.get("world", 1))
        if world != self.dist.world:
            raise ValueError(f"resume state was written by {world} process(es), this run has {self.dist.world}")
        # last: everything above may have consumed random numbers
        restore_rng(s["rng"] if self.dist.rank == 0 else s["rng_ranks"][self.dist.rank - 1])


def _load_data(params: Params, root: Path) -> tuple[PatchSet, PatchSet, str]:
    """Training and validation patches (checked against each other) and the training file's sha256."""
    t = params.train.loop
    train_file, val_file = root / paths.patches_file("train"), root / paths.patches_file("val")
    train = load_patches(train_file, params.data.scales)
    val = load_patches(val_file, params.data.scales, limit=t.max_val_patches)
    if train.crop != val.crop:
        raise ValueError(f"{train_file} has {train.crop}px patches but {val_file} has {val.crop}px: rerun 'patches'")
    return train, val, file_sha256(train_file)


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

    Writes ``model.pt`` (best mean val PSNR among the stage's own steps, never a variant's catch-up; EMA
    weights when EMA is on), ``metrics.json`` and
    ``plots.csv``, and the resume state ``models/.resume/<stage>/last.pt`` (:func:`paths.resume_file`);
    with ``track`` one MLflow run (:class:`.outputs.PhaseTracker`). A matching ``last.pt`` is resumed.
    ``on_step(step)`` is called after every completed step (progress hooks, tests).
    """
    from . import distributed

    t = params.train.loop
    dist, device = distributed.setup(t.devices, t.batch_size, t.device)
    try:
        return _train_phase(params, phase, variant, root=Path(root), track=track, progress=progress, on_step=on_step,
                            dist=dist, device=device)
    finally:
        distributed.teardown(dist)


def _train_phase(params: Params, phase: str, variant: str | None, *, root: Path, track: bool, progress: bool,
                 on_step: Callable[[int], None] | None, dist: DistContext, device: torch.device) -> TrainResult:
    from tqdm.auto import tqdm

    from .outputs import PhaseTracker, finish, prepare_outputs

    plan = plan_phase(params, phase, variant, root)
    train, val, data_hash = _load_data(params, root)
    run = TrainingRun(params, plan, device, train, dist)
    fp = stage_fingerprint(params, plan, data_hash, run.init)
    last_path = root / paths.resume_file(plan.phase, plan.variant)
    if dist.main:
        last_path = prepare_outputs(plan)
    dist.barrier()  # the others read last.pt once rank 0 has cleaned the folders
    resumed_from = run.resume(last_path, fp)
    track, progress = track and dist.main, progress and dist.main

    with ExitStack() as stack:
        tracker = stack.enter_context(PhaseTracker(params, plan, run, device, data_hash, resumed_from)) if track else None
        if run.pretrain and run.init is not None:
            log.info("[train %s] a changed architecture (%d of %d tensors start from initialisation): %d catch-up "
                     "steps as train.%s trains (its lr, schedule and losses) before %d steps with the phase's own",
                     plan.name, run.init["skipped"], run.init["loaded"] + run.init["skipped"], run.pretrain,
                     phases.get(plan.phase).catch_up, plan.cfg.steps)
        bar = stack.enter_context(tqdm(total=run.total_steps, initial=run.step, desc=f"train {plan.name}",
                                       disable=not progress, mininterval=2.0, dynamic_ncols=True))
        report = tracker.log if tracker is not None else None
        run._t0 = time.perf_counter()
        while run.step < run.total_steps:
            run.accumulate(run.train_step())
            bar.update(1)
            if run.at_boundary():
                row = run.boundary(val, last_path, fp, report, bar.write)
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", refresh=False)
            if on_step is not None:
                on_step(run.step)
        bar.close()
        if not dist.main:
            return TrainResult(plan.out_dir, run.best_step, {}, {}, run.step / max(run.train_seconds, 1e-9),
                               resumed_from, metrics={"rank": dist.rank, "steps": run.step})
        return finish(params, plan, run, val, data_hash, resumed_from, tracker)
