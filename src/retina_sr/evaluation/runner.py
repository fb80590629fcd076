"""The evaluation: every model and baseline, on every test image, at every zoom.

:func:`evaluate_outputs` scores one output against its HR reference (pure function of arrays);
:func:`run_evaluation` loops over zooms, images and candidates (baselines, ``input`` at zoom 1, the
trained models, and the ``hr`` reference row for the manual-mask metrics), measures the speed, and
returns an :class:`EvaluationResult` that :mod:`.report`, :mod:`.figures` and :mod:`.tracking_log` turn
into the study's products.

With ``evaluate.fast_path`` every trained model is scored twice: as the eager fp32 model (its row
``<name>``, forward-only speed) and as the fast path a user runs in real time
(:func:`retina_sr.inference.fastpath.fast_upscaler`: CUDA bf16 autocast + ``torch.compile``; CPU
ONNX Runtime), whose own quality and uint8-in/uint8-out speed are the row ``<name> (<mode>)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import paths
from ..config import Params, levels_for_zoom
from .artifacts import checkerboard_score
from .baselines import load_peers, upsample
from .metrics import cldice, dice, psnr, ssim
from .testset import ModelEntry, TestSet, discover_models, load_calibre_maps, load_test_set
from .vessels import VesselResult, VesselSegmenter, calibre_recovery, thinnest_recovered

__all__ = [
    "IMAGE_METRICS",
    "SPEED_METRICS",
    "Reference",
    "EvaluationResult",
    "make_reference",
    "evaluate_outputs",
    "run_model",
    "median_ms",
    "measure_speed",
    "run_evaluation",
]

log = logging.getLogger(__name__)

#: per-image metrics, in report order
IMAGE_METRICS = (
    "psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb",
    "vessel_dice", "vessel_cldice", "manual_dice", "manual_cldice", "thinnest_calibre", "checkerboard",
)
#: per model-and-zoom speed metrics
SPEED_METRICS = ("ms", "fps")


@dataclass
class Reference:
    """Everything the scores of one test image need from its HR side."""

    image_id: str
    source: str
    hr: np.ndarray
    fov: np.ndarray
    seg: VesselResult  # HR vessel segmentation (its threshold is reused for the outputs)
    manual: np.ndarray | None  # manual / true vessel mask, None when the source has none
    calibre: np.ndarray | None  # calibre map (HR px), None when absent


@dataclass
class EvaluationResult:
    """Per-image rows, per model-and-zoom speed, model entries and figure material."""

    rows: pd.DataFrame
    speed: pd.DataFrame  # model, zoom, ms, fps, device
    models: list[ModelEntry]
    device: str
    test_description: dict
    panels: dict = field(default_factory=dict)  # (zoom, image_id) -> {"lr", "hr", "fov", "outputs": {name: img}, "vessels": {name: mask}}
    fast_paths: dict = field(default_factory=dict)  # fast-path row name ("l1 (<mode>)") -> its model's name


def make_reference(
    image_id: str, source: str, hr: np.ndarray, fov: np.ndarray, manual: np.ndarray | None,
    calibre: np.ndarray | None, segmenter: VesselSegmenter, threshold: float | None = None,
) -> Reference:
    """Segment the HR image (Otsu threshold unless ``threshold``) and bundle the reference data."""
    seg = segmenter.segment(hr, fov, threshold)
    return Reference(image_id, source, hr, fov, seg, manual, calibre)


def evaluate_outputs(
    output: np.ndarray, ref: Reference, scale: int, segmenter: VesselSegmenter, is_reference: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """All :data:`IMAGE_METRICS` of one output (``uint8`` RGB at HR size) and its vessel map.

    ``is_reference=True`` scores the HR image itself (only the manual-mask and calibre metrics are
    meaningful; the others are NaN).
    """
    if output.shape != ref.hr.shape:
        raise ValueError(f"{ref.image_id}: output shape {output.shape} differs from HR shape {ref.hr.shape}")
    nan = float("nan")
    if is_reference:
        seg = ref.seg.mask
        m = dict.fromkeys(IMAGE_METRICS, nan)
    else:
        seg = segmenter.segment(output, ref.fov, ref.seg.threshold).mask
        # every score on one region, the retina: the FOV eroded by the segmenter's margin (2 % of the side).
        # The aperture's edge is a step of ~190 grey levels; where PSNR counted it, its few rows weighed as
        # much as the whole retina (docs/ablation.md, "Read first")
        region = ref.seg.region
        m = {
            "psnr_y": psnr(output, ref.hr, region, "y"),
            "psnr_rgb": psnr(output, ref.hr, region, "rgb"),
            "ssim_y": ssim(output, ref.hr, region, "y"),
            "ssim_rgb": ssim(output, ref.hr, region, "rgb"),
            "vessel_dice": dice(seg, ref.seg.mask, region),
            "vessel_cldice": cldice(seg, ref.seg.mask, region),
            "manual_dice": nan,
            "manual_cldice": nan,
            "thinnest_calibre": nan,
            "checkerboard": checkerboard_score(output, ref.hr, scale),
        }
    if ref.manual is not None:
        m["manual_dice"] = dice(seg, ref.manual, ref.seg.region)
        m["manual_cldice"] = cldice(seg, ref.manual, ref.seg.region)
        if ref.calibre is not None:
            bins = calibre_recovery(seg, ref.manual, ref.calibre, region=ref.seg.region)
            m["thinnest_calibre"] = thinnest_recovered(bins)
    return m, seg


@dataclass
class _ScoreJob:
    """Everything needed to score one test image's outputs (picklable, for worker processes)."""

    path: str
    scale: int
    image_id: str
    source: str
    hr: np.ndarray
    fov: np.ndarray
    manual: np.ndarray | None
    calibre: np.ndarray | None
    outputs: dict[str, np.ndarray]
    kinds: dict[str, str]
    segmenter: VesselSegmenter
    threshold: float | None
    hr_seg: VesselResult | None
    keep_maps: bool


def _score_job(job: _ScoreJob) -> tuple[list[dict], dict[str, np.ndarray] | None, VesselResult]:
    """Rows (one per output, plus ``hr`` where a manual mask exists), vessel maps if asked, HR segmentation."""
    hr_seg = job.hr_seg
    if hr_seg is None:
        try:
            hr_seg = job.segmenter.segment(job.hr, job.fov, job.threshold)
        except ValueError as err:
            raise ValueError(f"{job.path}: HR image {job.image_id!r}: {err}") from None
    ref = Reference(job.image_id, job.source, job.hr, job.fov, hr_seg, job.manual, job.calibre)
    base = {"image_id": job.image_id, "source": job.source, "zoom": job.scale}
    rows, maps = [], {}
    for name, img in job.outputs.items():
        try:
            m, seg = evaluate_outputs(img, ref, job.scale, job.segmenter)
        except ValueError as err:
            raise ValueError(f"{job.path}: image {job.image_id!r}, {name} at x{job.scale}: {err}") from None
        maps[name] = seg
        rows.append({**base, "model": name, "kind": job.kinds[name], **m})
    if job.manual is not None:
        m, _ = evaluate_outputs(job.hr, ref, job.scale, job.segmenter, is_reference=True)
        rows.append({**base, "model": "hr", "kind": "reference", **m})
    if not job.keep_maps:
        return rows, None, hr_seg
    maps["hr"] = hr_seg.mask
    return rows, maps, hr_seg


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _scoring_pool(workers: int):
    """A spawn-based process pool for ``workers > 1`` (spawn: safe after torch/CUDA initialisation)."""
    if workers <= 1:
        return None
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn"), initializer=_worker_init)


# ------------------------------------------------------------------------------------------ models
def _input(img: np.ndarray, device):
    from ..models.tensors import to_tensor

    return to_tensor(img, device, channels_last=True)  # a single image's permuted view is channels-last


def run_model(model, lr: np.ndarray, scale: int, device="cpu") -> np.ndarray:
    """Super-resolve one RGB ``uint8`` image by ``scale`` with a LapSRN (last pyramid output, fp32)."""
    import torch

    with torch.inference_mode():
        out = model(_input(lr, device), n_up=levels_for_zoom(scale))[-1]
        out = out.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return out[0].permute(1, 2, 0).cpu().numpy()


def median_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> float:
    """Median wall time (ms) of ``fn()`` over ``repeats`` runs after 2 untimed runs (:func:`retina_sr.runtime.time_call`)."""
    from ..runtime import time_call

    return float(statistics.median(time_call(fn, repeats, warmup=2, sync=sync))) * 1000.0


def _model_timer(model, lr: np.ndarray, scale: int, device) -> tuple[Callable[[], object], Callable[[], None] | None]:
    import torch

    x = _input(lr, device)
    n_up = levels_for_zoom(scale)

    def fn() -> object:
        with torch.inference_mode():
            return model(x, n_up=n_up)[-1]

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    return fn, sync


class _FastPaths:
    """The fast path of each trained model (:func:`~retina_sr.inference.fastpath.fast_upscaler`), built once
    per model; its outputs are named ``<model> (<mode>)`` after the mode that really ran them."""

    def __init__(self, models: dict[str, Any], entries: list[ModelEntry], device) -> None:
        import copy

        from ..inference.fastpath import fast_upscaler

        meta = {e.name: e.meta for e in entries}
        self._ups: dict[str, Any] = {}  # name -> retina_sr.inference.fastpath.FastUpscaler
        self.rows: dict[str, str] = {}  # row name -> model name
        try:
            for name, model in models.items():  # a copy: fast_upscaler moves its model to the CPU
                self._ups[name] = fast_upscaler(copy.deepcopy(model), meta[name], device)
        except BaseException:
            self.close()
            raise

    def outputs(self, lr: np.ndarray, scale: int, names: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            up = self._ups[name]
            sr = up(lr, scale)  # the mode is known once it ran (ONNX Runtime: its provider and graph)
            row = f"{name} ({up.mode})"
            self.rows[row] = name
            out[row] = sr
        return out

    def speed(self, lr: np.ndarray, scale: int, names: list[str], device_label: str, repeats: int) -> list[dict]:
        """Median uint8-in/uint8-out time of each fast path (transfers included; ``<device> uint8 in/out``)."""
        rows = []
        for name in names:
            up = self._ups[name]
            ms = median_ms(partial(up, lr, scale), repeats)
            rows.append({"model": f"{name} ({up.mode})", "zoom": scale, "ms": ms,
                         "fps": 1000.0 / ms if ms > 0 else math.inf, "device": f"{device_label}, uint8 in/out"})
        return rows

    def close(self) -> None:
        for up in self._ups.values():
            up.close()


def _load_models(entries: list[ModelEntry], device) -> dict[str, object]:
    from ..models.checkpoint import load_model

    loaded = {}
    for e in entries:
        model, meta = load_model(e.path, device)
        e.meta = dict(meta)
        e.phase = e.phase or meta.get("phase")
        e.variant = e.variant if e.variant is not None else meta.get("variant")
        loaded[e.name] = model
    return loaded


def _describe(params: Params, sets: dict[int, TestSet]) -> dict:
    first = next(iter(sets.values()))
    p = params.data.patches
    sources: dict[str, int] = {}
    for s in first.sources:
        sources[s] = sources.get(s, 0) + 1
    from ..data.patches import test_degradation  # the data stage's statement of the test degradation

    td = test_degradation(p)
    degradation = (
        f"Gaussian blur sigma {td['sigma']:.2f} HR px at x1 and {td['sigma']:.2f} x zoom HR px above, "
        f"area downscale by the zoom (INTER_AREA)"
        + (f", Poisson noise peak {td['poisson_peak']}" if td.get("poisson_peak") else "")
        + f", Gaussian noise std {td['noise_std']:.3f} (0..1 scale), 8-bit quantisation"
        + (f", JPEG quality {td['jpeg_quality']}" if td.get("jpeg_quality") else "")
        + "; seeded per image and zoom (data stage, `data/patches/test_x{s}.npz`)"
    )
    return {
        "count": len(first),
        "ids": list(first.ids),
        "sources": sources,
        "size": f"{first.hr.shape[2]}x{first.hr.shape[1]}",
        "with_vessel_masks": int(first.has_vessels.sum()),
        "zooms": sorted(sets),
        "degradation": degradation,
    }


def measure_speed(lr: np.ndarray, scale: int, candidates: list[tuple[str, str]], peers: dict,
                  models: dict[str, object], device, device_label: str, repeats: int) -> list[dict]:
    """Speed rows (model, zoom, ms, fps, device) at ``scale`` on one test image ``lr``: the median of
    ``repeats`` warm runs of every baseline/peer (OpenCV, CPU) and every model (forward only, input
    already on ``device``)."""
    rows = []

    def row(name: str, ms: float, where: str) -> dict:
        return {"model": name, "zoom": scale, "ms": ms, "fps": 1000.0 / ms if ms > 0 else math.inf, "device": where}

    for name, kind in candidates:
        if kind == "baseline":
            rows.append(row(name, median_ms(partial(upsample, lr, scale, name), repeats), "CPU (OpenCV)"))
        elif kind == "peer":
            rows.append(row(name, median_ms(partial(peers[(name, scale)], lr), repeats), "CPU (OpenCV DNN)"))
    for name, model in models.items():
        fn, sync = _model_timer(model, lr, scale, device)
        rows.append(row(name, median_ms(fn, repeats, sync=sync), device_label))
    return rows


def _load_test_sets(params: Params, root: Path) -> dict[int, TestSet]:
    """The test pairs of every zoom of ``data.scales``; they must hold the same images."""
    cfg = params.evaluate
    sets = {s: load_test_set(root / paths.patches_file("test", s), s, cfg.max_images) for s in params.data.scales}
    ids0 = sets[params.data.scales[0]].ids
    for ts in sets.values():
        if ts.ids != ids0:
            raise ValueError(f"{ts.path}: test images {ts.ids} differ from those of the other zooms {ids0}; "
                             "re-run the patches stage")
    return sets


def _outputs(lr: np.ndarray, scale: int, candidates: list[tuple[str, str]], peers: dict, models: dict[str, object],
             device) -> dict[str, np.ndarray]:
    """Every candidate's output for one test image: the input itself (zoom 1), baselines, peers, then models."""
    outputs: dict[str, np.ndarray] = {}
    for name, kind in candidates:
        outputs[name] = (lr.copy() if kind == "input" else peers[(name, scale)](lr)
                         if kind == "peer" else upsample(lr, scale, name))
    for name, model in models.items():
        outputs[name] = run_model(model, lr, scale, device)
    return outputs


def run_evaluation(
    params: Params,
    models: list[ModelEntry] | None = None,
    root: str | Path = ".",
    device: str | None = None,
    segmenter: VesselSegmenter | None = None,
    progress: bool = True,
    on_panel: Callable[[int, str, dict], None] | None = None,
    workers: int = 1,
) -> EvaluationResult:
    """Evaluate ``models`` (default: :func:`discover_models` under ``root``) and the baselines.

    Reads ``root/data/patches/test_x{s}.npz`` for every ``s`` in ``params.data.scales``; a model is run
    at the zooms it supports (``2 ** levels >= s``). Figure material of the first
    ``evaluate.figure_images`` images is handed to ``on_panel(zoom, image_id, panel)`` as soon as it
    exists (so full-size outputs are not all kept in memory), or kept in ``result.panels`` when no
    callback is given. ``workers > 1`` scores the images in that many processes (models still run in
    this process, one image at a time); the results are identical and in the same order.
    """
    from tqdm import tqdm

    from ..runtime import device_name, pick_device

    root = Path(root)
    cfg = params.evaluate
    segmenter = segmenter or VesselSegmenter()
    dev = pick_device(device or params.train.loop.device)
    dev_name = device_name(dev)
    entries = discover_models(root) if models is None else list(models)
    loaded = _load_models(entries, dev)
    if not entries:
        log.warning("no trained model found under %s: evaluating the baselines only", root / paths.MODELS)

    sets = _load_test_sets(params, root)
    peers, peer_notes = load_peers(cfg.peers_dir, params.data.scales)
    for note in peer_notes:
        log.warning("%s", note)
    rows: list[dict] = []
    speed: list[dict] = []
    panels: dict = {}
    hr_segs: dict[tuple[str, str], VesselResult] = {}  # the HR of an image is the same at every zoom
    n_fig = cfg.figure_images
    pool = _scoring_pool(workers)
    fast: _FastPaths | None = None
    try:
        if cfg.fast_path and loaded:
            fast = _FastPaths(loaded, entries, dev)
        for s, ts in sets.items():
            calib = load_calibre_maps(ts.ids, ts.hr.shape[1:3], root)
            candidates = [("input", "input")] if s == 1 else [(b, "baseline") for b in cfg.baselines]
            candidates += [(name, "peer") for (name, ps) in peers if ps == s]
            usable = [e for e in entries if e.max_scale >= s]
            for e in entries:
                if e.max_scale < s:
                    log.info("%s supports up to x%d: skipped at x%d", e.name, e.max_scale, s)
            pending: deque = deque()

            def consume(item) -> None:
                key, i, outputs, fut = item
                res_rows, maps, hr_seg = fut.result() if pool is not None else fut
                hr_segs.setdefault(key, hr_seg)
                rows.extend(res_rows)
                if maps is not None:
                    panel = {"lr": ts.lr[i], "hr": ts.hr[i], "fov": ts.fov[i], "outputs": outputs,
                             "vessels": maps, "region": hr_seg.region}
                    if on_panel is not None:
                        on_panel(s, ts.ids[i], panel)
                    else:
                        panels[(s, ts.ids[i])] = panel

            it = tqdm(range(len(ts)), desc=f"evaluate x{s}", disable=not progress, leave=False)
            for i in it:
                manual = ts.vessels[i] if ts.has_vessels[i] else None
                key = (ts.ids[i], hashlib.sha1(ts.hr[i].tobytes() + ts.fov[i].tobytes()).hexdigest())
                outputs = _outputs(ts.lr[i], s, candidates, peers, {e.name: loaded[e.name] for e in usable}, dev)
                if fast is not None:
                    outputs.update(fast.outputs(ts.lr[i], s, [e.name for e in usable]))
                job = _ScoreJob(
                    path=str(ts.path), scale=s, image_id=ts.ids[i], source=ts.sources[i], hr=ts.hr[i], fov=ts.fov[i],
                    manual=manual, calibre=calib.get(ts.ids[i]) if manual is not None else None,
                    outputs=outputs, kinds={**dict.fromkeys(outputs, "model"), **dict(candidates)},
                    segmenter=segmenter, threshold=cfg.vessel_threshold, hr_seg=hr_segs.get(key),
                    keep_maps=i < n_fig,
                )
                pending.append((key, i, outputs if i < n_fig else None,
                                pool.submit(_score_job, job) if pool is not None else _score_job(job)))
                while len(pending) > (2 * workers if pool is not None else 0):  # bound the memory in flight
                    consume(pending.popleft())
            while pending:  # drain before timing: the speed runs must not compete with the scoring
                consume(pending.popleft())
            speed += measure_speed(ts.lr[0], s, candidates, peers, {e.name: loaded[e.name] for e in usable}, dev,
                                   dev_name, cfg.speed_repeats)
            if fast is not None:
                speed += fast.speed(ts.lr[0], s, [e.name for e in usable], dev_name, cfg.speed_repeats)
    finally:
        if fast is not None:
            fast.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    rows_df = pd.DataFrame(rows, columns=["image_id", "source", "zoom", "model", "kind", *IMAGE_METRICS])
    speed_df = pd.DataFrame(speed, columns=["model", "zoom", "ms", "fps", "device"])
    desc = _describe(params, sets)
    desc["peers"] = sorted({name for name, _ in peers})
    desc["peer_notes"] = peer_notes
    return EvaluationResult(rows_df, speed_df, entries, dev_name, desc, panels,
                            dict(fast.rows) if fast is not None else {})
