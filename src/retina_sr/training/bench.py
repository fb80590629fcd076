"""Training throughput benchmark: steps/s of the real training step for the study's model sizes.

``retina-sr bench-train`` times :meth:`retina_sr.training.trainer.TrainingRun.train_step` (forward, loss,
backward, clipping, Adam, EMA) on synthetic uint8 patches, cycling the zooms of ``data.scales`` like
training does, for the demo (F16 D3) and full-study (F64 D10) LapSRN sizes, with the pyramid
Charbonnier loss alone (phase ``l1``) and with the perceptual + saliency terms (phase
``perceptual``, random VGG16 so nothing is downloaded), for each ``train.loop.degrade_on`` (host OpenCV
loop vs batched torch ops on the device) and ``train.loop.compile`` setting asked for. On CUDA bf16 autocast and channels_last
follow ``train.loop.amp`` / ``train.loop.channels_last``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import Params, params_from_dict, parse_arch
from ..phases import PHASES

__all__ = ["SIZES", "HEADER", "parse_size", "bench_train", "format_row", "format_results"]

SIZES = {"demo": (16, 3), "full": (64, 10)}


def parse_size(name: str) -> tuple[int, int]:
    """``demo`` -> (16, 3), ``full`` -> (64, 10), ``F32D5`` -> (32, 5) (:func:`retina_sr.config.parse_arch`)."""
    if name in SIZES:
        return SIZES[name]
    try:
        return parse_arch(name)
    except ValueError:
        raise ValueError(f"unknown model size {name!r}: use demo, full or F<features>D<depth> (e.g. F32D5)") from None


def _synthetic(n: int, crop: int, scales: list[int], seed: int = 0):
    from .data import PatchSet

    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (n, crop, crop, 3), dtype=np.uint8)
    lr = {s: np.ascontiguousarray(hr[:, ::s, ::s]) for s in scales}
    return PatchSet(hr=hr, lr=lr, path=None, fov=np.ones((n, crop, crop), bool))  # type: ignore[arg-type]


def bench_train(sizes: Sequence[str] = ("demo", "full"), steps: int = 5, device: str = "auto", batch_size: int | None = None,
                crop: int | None = None, perceptual: bool = True, warmup: int = 2,
                params: Params | None = None, degrade_on: Sequence[str] = ("auto",),
                compile: Sequence[bool] = (False,),
                on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Measure steps/s for every size (and loss set, ``train.loop.degrade_on`` setting and
    ``train.loop.compile`` setting, all in one run); returns one dict per measurement, each also passed to
    ``on_result`` as soon as it is measured (a run cut short keeps what it measured).

    ``steps`` and ``warmup`` are rounded up to whole cycles through ``data.scales`` (the per-step
    cost depends on the zoom), so the rate is the training average.
    """
    from ..runtime import device_name, pick_device
    from .trainer import TrainingRun, plan_phase

    if steps < 1:
        raise ValueError("--steps must be >= 1")
    base = params if params is not None else Params()
    raw = base.model_dump(mode="json")
    raw["train"]["loop"]["device"] = device
    if batch_size is not None:
        raw["train"]["loop"]["batch_size"] = batch_size
    if crop is not None:
        raw["data"]["patches"]["crop"] = crop
        raw["data"]["size"] = max(raw["data"]["size"], crop)
    raw["train"]["perceptual"]["vgg_weights"] = "random"
    dev = pick_device(device)
    results = []
    # the pixel-only first phase, and the first phase with the perceptual terms
    timed = [PHASES[0]] + ([next(ph for ph in PHASES if "perceptual" in ph.losses)] if perceptual else [])
    for size in sizes:
        f, d = parse_size(size)
        raw["model"]["features"], raw["model"]["depth"] = f, d
        p = params_from_dict(raw, "bench-train settings")
        data = _synthetic(max(2 * p.train.loop.batch_size, 4), p.data.patches.crop, p.data.scales)
        for ph, deg, comp in [(ph, d, c) for ph in timed for d in degrade_on for c in compile]:
            raw["train"]["loop"]["degrade_on"], raw["train"]["loop"]["compile"] = deg, comp
            p = params_from_dict(raw, "bench-train settings")
            plan = dataclasses.replace(plan_phase(p, ph.name), init_from=None)
            run = TrainingRun(p, plan, dev, data)
            cycle = len(p.data.scales)  # time whole zoom cycles: zoom 1 costs more than zoom 8
            n_warm, n_steps = -(-warmup // cycle) * cycle, -(-steps // cycle) * cycle
            t0 = time.perf_counter()
            for _ in range(n_warm):  # compiles here when train.loop.compile is on
                run.train_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            warm_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(n_steps):
                run.train_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            results.append({
                "size": size, "features": f, "depth": d,
                "loss": "pixel+perceptual+saliency" if "perceptual" in ph.losses else "pixel",
                "batch": p.train.loop.batch_size, "crop": p.data.patches.crop, "scales": list(p.data.scales),
                "device": device_name(dev), "amp_bf16": run.amp, "degradation": run.degrade_on,
                "compiled": run.compiled, "steps": n_steps, "warmup_s": warm_s,
                "steps_per_s": n_steps / dt, "patches_per_s": n_steps * p.train.loop.batch_size / dt,
            })
            if on_result is not None:
                on_result(results[-1])
    return results


HEADER = "size   F   D  loss                       batch crop  bf16  degrade  compiled  steps/s  patches/s  warm-up s  device"


def format_row(r: dict[str, Any]) -> str:
    """One measurement as a row under :data:`HEADER`."""
    return (f"{r['size']:<6} {r['features']:>2} {r['depth']:>3}  {r['loss']:<26} {r['batch']:>5} {r['crop']:>4}  "
            f"{str(r['amp_bf16']):<5} {r['degradation']:<7}  {str(r['compiled']):<8}  {r['steps_per_s']:>7.3f}  "
            f"{r['patches_per_s']:>9.2f}  {r['warmup_s']:>9.1f}  {r['device']}")


def format_results(results: list[dict[str, Any]]) -> str:
    lines = [HEADER, *(format_row(r) for r in results)]
    if results:
        lines.append(f"(zooms cycled per step: {results[0]['scales']}; {results[0]['steps']} timed steps after warm-up)")
    return "\n".join(lines)
